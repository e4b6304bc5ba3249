"""The kinds of embedder checkpoint (encoder, BGE-M3, decoder-only LLM, ICL LLM): telling them apart,
and the defaults each kind brings (pooling, instruction format, dtype)."""

from __future__ import annotations

import os
from typing import Any

from bgekit.errors import ConfigError, ModelLoadError
from bgekit.inference.heads import COLBERT_FILE, SPARSE_FILE
from bgekit.models.settings import EmbedderSettings

LLM_KINDS = ("decoder", "icl")
"""Decoder-only kinds: last-token pooling, bf16 by default."""
KIND_DEFAULT_FORMATS = {"decoder": "Instruct: {}\nQuery: {}", "icl": "<instruct>{}\n<query>{}"}
"""FlagEmbedding's default query instruction formats for ``FlagLLMModel`` and ``FlagICLModel``."""


def kind_dtype(kind: str | None) -> str:
    """The dtype a kind of embedder runs in when neither the caller nor the checkpoint names one.

    Example:
        >>> kind_dtype("decoder"), kind_dtype("encoder")
        ('bf16', 'fp32')
    """
    return "bf16" if kind in LLM_KINDS else "fp32"


def is_decoder_only(config: Any) -> bool:
    """True for causal-LM architectures (Llama, Mistral, Qwen2, Gemma2, ...), False for BERT-likes."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return False
    architectures = getattr(config, "architectures", None) or []
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or any(
        a.endswith("ForCausalLM") for a in architectures
    )


def apply_kind_defaults(settings: EmbedderSettings, origin: Any, folder: str, config: Any) -> None:
    """Decide the kind when no source did (M3 head files, decoder-only config) and set its defaults on
    ``settings`` (those not in ``origin``, the settings some source gave)."""
    found = [name for name in (SPARSE_FILE, COLBERT_FILE) if os.path.isfile(os.path.join(folder, name))]
    if "kind" not in origin:
        if len(found) == 2:
            settings.kind = "m3"
        elif len(found) == 1:
            missing = COLBERT_FILE if found[0] == SPARSE_FILE else SPARSE_FILE
            raise ModelLoadError(
                f"{os.path.join(folder, missing)} is missing: {found[0]} is there, and a BGE-M3 "
                f"checkpoint needs both {SPARSE_FILE} and {COLBERT_FILE} (or pass kind='encoder' to use "
                "the dense vectors only)"
            )
        elif is_decoder_only(config):
            settings.kind = "decoder"
    if settings.kind in LLM_KINDS:
        if "pooling" not in origin:
            settings.pooling = "last_token"
        if "query_instruction_format" not in origin:
            settings.query_instruction_format = KIND_DEFAULT_FORMATS[settings.kind]
    for name in ("colbert_dim",):
        if getattr(settings, name) is not None and settings.kind != "m3":
            raise ConfigError(
                f"{name} is only valid for BGE-M3 models (kind='m3'), not kind={settings.kind!r}"
            )
