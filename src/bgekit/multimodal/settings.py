"""Settings of a multimodal embedder, saved beside its weights in ``bgekit.json`` (``multimodal_embedder``).

Order, highest first: explicit arguments, the folder's ``bgekit.json``, bgekit's table of published
multimodal checkpoints, then what the folder's ``config.json`` says (a ``clip`` model type is a CLIP-based
BGE-VL model, a ``llava_next`` one BGE-VL-MLLM).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bgekit.errors import ConfigError
from bgekit.models.settings import Dtype, merge_setting_layers, normalize_dtype, read_saved_settings

SETTINGS_SECTION = "multimodal_embedder"
"""The ``bgekit.json`` section (text embedders use ``embedder``, so one file can say both)."""

MultimodalKind = Literal["clip", "visualized_bge", "mllm"]
"""``clip``: a CLIP dual encoder (BGE-VL-base/large): text and image towers with projections; an image with
a text is embedded as the normalised sum of the two projected features (MegaPairs' ``encode_multimodal``).
``visualized_bge``: a BGE text model whose input takes an EVA02-CLIP image's patch tokens before the text
(Visualized-BGE); the text model's CLS is the vector of a text, an image, or both.
``mllm``: a LLaVA-NeXT model (BGE-VL-MLLM-S1/S2, "MMRet-MLLM"): each item is a chat prompt holding the
text and the image's tokens (queries with their task instruction), its last token's hidden state the vector."""

_PUBLISHED: dict[str, dict[str, Any]] = {
    name.lower(): {"kind": "clip", "normalize": True} for name in ("BAAI/BGE-VL-base", "BAAI/BGE-VL-large")
} | {
    name.lower(): {"kind": "mllm", "normalize": True}
    for name in ("BAAI/BGE-VL-MLLM-S1", "BAAI/BGE-VL-MLLM-S2")
}

_MODEL_TYPES = {"clip": "clip", "llava_next": "mllm"}
"""``config.json`` model types bgekit runs as a multimodal kind."""


@dataclass
class MultimodalSettings:
    """Everything besides the weights that decides a multimodal embedder's outputs.

    Attributes:
        kind: the architecture (see :data:`MultimodalKind`).
        normalize: L2-normalise the output vectors (the official BGE-VL encoders always do).
        query_instruction / query_instruction_format: text put before the text part of each query, and how
            (``"{}{}"`` joins them). BGE-VL's CLIP models use none: a composed query is the image with the
            modification text as it is.
        passage_instruction / passage_instruction_format: the same for corpus items.
        max_length: token limit of texts (``None``: the text tower's position count, 77 for CLIP); longer
            texts are truncated (the official code does not truncate and fails on them).
        dtype: default compute dtype when the caller does not choose one.

    Example:
        >>> MultimodalSettings(kind="clip").normalize
        True
    """

    kind: MultimodalKind = "clip"
    normalize: bool = True
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    max_length: int | None = None
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(MultimodalKind):
            raise ConfigError(
                f"kind={self.kind!r} is not valid; choose one of {list(get_args(MultimodalKind))}"
            )
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"normalize={self.normalize!r} is not valid; expected True or False")
        if self.dtype is not None:
            self.dtype = normalize_dtype(self.dtype)  # type: ignore[assignment]
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ConfigError(
                f"max_length={self.max_length!r} is not valid; expected an integer >= 2 or None"
            )
        for name in ("query_instruction", "passage_instruction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}={value!r} is not valid; expected a string or None")
        for name in ("query_instruction_format", "passage_instruction_format"):
            fmt = getattr(self, name)
            if not isinstance(fmt, str) or fmt.count("{}") != 2:
                raise ConfigError(
                    f"{name}={fmt!r} is not valid; it needs exactly two '{{}}' (instruction, then text)"
                )

    @property
    def query_max_length(self) -> int | None:
        """``max_length`` under the text embedders' name (one limit serves queries and passages here)."""
        return self.max_length

    @property
    def passage_max_length(self) -> int | None:
        """``max_length`` under the text embedders' name."""
        return self.max_length

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def saved_kind(name_or_path: str) -> str | None:
    """The ``kind`` a local folder's ``bgekit.json`` names, or ``None`` (no folder, no file, no kind).

    Example:
        >>> saved_kind("/nonexistent") is None
        True
    """
    if not os.path.isdir(name_or_path):
        return None
    kind = read_saved_settings(name_or_path, SETTINGS_SECTION).get("kind")
    return kind if isinstance(kind, str) else None


def kind_from_config(config: Any) -> str | None:
    """The multimodal kind a ``transformers`` config describes, or ``None`` when bgekit has none for it.

    A Visualized-BGE folder's ``config.json`` is its text model's (BERT, XLM-RoBERTa): the kind is read
    from the ``bgekit.json`` beside it (the folder the config was loaded from).
    """
    folder = getattr(config, "_name_or_path", None)
    kind = saved_kind(folder) if isinstance(folder, str) and folder else None
    if kind == "visualized_bge":
        return kind
    return _MODEL_TYPES.get(str(getattr(config, "model_type", None)))


def detect_kind(name_or_path: str) -> str | None:
    """The kind a model is loaded as before its config is read: its ``bgekit.json``, bgekit's table of
    published checkpoints, or a local ``config.json``'s model type (``None``: none of them says).

    Example:
        >>> detect_kind("BAAI/BGE-VL-MLLM-S1")
        'mllm'
    """
    kind = saved_kind(name_or_path)
    if kind is None:
        kind = _PUBLISHED.get(name_or_path.strip().rstrip("/").lower(), {}).get("kind")
    path = os.path.join(name_or_path, "config.json")
    if kind is None and os.path.isfile(path):
        import json

        try:
            with open(path, encoding="utf-8") as handle:
                kind = _MODEL_TYPES.get(str(json.load(handle).get("model_type")))
        except (OSError, ValueError, AttributeError):
            return None  # the loader reports the file
    return kind if isinstance(kind, str) else None


def resolve_multimodal_settings(
    name_or_path: str, folder: str, config: Any, explicit: dict[str, Any]
) -> tuple[MultimodalSettings, dict[str, str]]:
    """Merge the sources of settings; return them and, per field, which source decided it.

    Args:
        name_or_path: what the user passed (a hub name is looked up in the published table).
        folder: the local model folder.
        config: the folder's ``transformers`` configuration.
        explicit: arguments the caller gave (``None`` values mean "not given").

    Raises:
        ConfigError: an unknown setting (naming its source), or a model bgekit cannot embed images with.

    Example:
        >>> from transformers import CLIPConfig
        >>> s, origin = resolve_multimodal_settings("BAAI/BGE-VL-base", "/nonexistent", CLIPConfig(), {})
        >>> s.kind, origin["kind"]
        ('clip', 'published-table')
    """
    detected = kind_from_config(config)
    layers = [
        ("config.json", {"kind": detected} if detected else {}),
        ("published-table", dict(_PUBLISHED.get(name_or_path.strip().rstrip("/").lower(), {}))),
        ("bgekit.json", read_saved_settings(folder, SETTINGS_SECTION)),
        ("argument", {k: v for k, v in explicit.items() if v is not None}),
    ]
    merged, origin = merge_setting_layers(layers, MultimodalSettings.field_names())
    if "kind" not in merged:
        raise ConfigError(
            f"{folder!r} is a {getattr(config, 'model_type', None)!r} model; multimodal embedders support "
            f"{list(get_args(MultimodalKind))} (BGE-VL CLIP and MLLM, Visualized-BGE); use bgekit.Embedder for text models"
        )
    return MultimodalSettings(**merged), origin
