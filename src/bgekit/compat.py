"""FlagEmbedding's names mapped onto bgekit's, nothing else.

``FlagModel``/``FlagAutoModel`` accept FlagEmbedding's argument names and defaults. Where bgekit differs on
purpose: unknown keyword arguments raise ``ConfigError`` listing the valid ones (FlagEmbedding stores them
silently), and fp16 on CPU falls back to fp32 with a warning.

Example:
    >>> from bgekit.compat import FlagModel
    >>> model = FlagModel("BAAI/bge-small-en-v1.5", use_fp16=True)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from bgekit.errors import ConfigError, reject_unknown_kwargs
from bgekit.inference.embedder import Embedder
from bgekit.inference.reranker import Reranker

_FLAG_MODEL_ARGS = (
    "normalize_embeddings",
    "use_fp16",
    "use_bf16",
    "query_instruction_for_retrieval",
    "query_instruction_format",
    "devices",
    "pooling_method",
    "trust_remote_code",
    "cache_dir",
    "batch_size",
    "query_max_length",
    "passage_max_length",
    "convert_to_numpy",
    "truncate_dim",
    "kind",
    "passage_instruction_for_retrieval",
    "passage_instruction_format",
    "padding_side",
    "examples_for_task",
    "show_progress",
)


def _flag_kwargs_to_bgekit(where: str, kwargs: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    reject_unknown_kwargs(where, {k: v for k, v in kwargs.items() if k not in _FLAG_MODEL_ARGS}, _FLAG_MODEL_ARGS)
    merged = {**defaults, **kwargs}
    dtype = "fp16" if merged.pop("use_fp16", False) else None
    if merged.pop("use_bf16", False):
        dtype = "bf16"
    mapping = {
        "normalize_embeddings": "normalize",
        "query_instruction_for_retrieval": "query_instruction",
        "passage_instruction_for_retrieval": "passage_instruction",
        "pooling_method": "pooling",
    }
    out = {mapping.get(k, k): v for k, v in merged.items() if k != "convert_to_numpy"}
    out["dtype"] = dtype
    return out


class FlagModel(Embedder):
    """FlagEmbedding's ``FlagModel`` (encoder-only, BGE v1/v1.5) on bgekit's engine.

    Defaults are FlagEmbedding's: CLS pooling, normalised, max length 512 on both sides, batch size 256,
    fp16 requested (fp32 on CPU).
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        self._convert_to_numpy = kwargs.get("convert_to_numpy", True)
        defaults = {
            "normalize_embeddings": True,
            "use_fp16": True,
            "pooling_method": "cls",
            "query_instruction_format": "{}{}",
            "batch_size": 256,
            "query_max_length": 512,
            "passage_max_length": 512,
        }
        super().__init__(model_name_or_path, **_flag_kwargs_to_bgekit("FlagModel", kwargs, defaults))

    def _encode_validated(self, texts: list[str], single: bool, **kwargs: Any) -> Any:
        kwargs.setdefault("convert_to_numpy", self._convert_to_numpy)
        return super()._encode_validated(texts, single, **kwargs)


class FlagAutoModel:
    """FlagEmbedding's ``FlagAutoModel.from_finetuned``: settings from bgekit's table of checkpoints.

    Unlike ``FlagModel``, unspecified settings come from the checkpoint (its ``bgekit.json``, its
    sentence-transformers configuration, or the published-checkpoint table), as FlagEmbedding's
    ``from_finetuned`` looks them up by model name.
    """

    def __init__(self) -> None:
        raise TypeError("use FlagAutoModel.from_finetuned(name_or_path, ...)")

    @classmethod
    def from_finetuned(cls, model_name_or_path: str, **kwargs: Any) -> Embedder:
        convert_to_numpy = kwargs.pop("convert_to_numpy", True)
        model = Embedder(model_name_or_path, **_flag_kwargs_to_bgekit("FlagAutoModel", kwargs, {}))
        if not convert_to_numpy:
            original = model._encode_validated

            def _encode(texts: list[str], single: bool, **kw: Any) -> Any:
                kw.setdefault("convert_to_numpy", False)
                return original(texts, single, **kw)

            model._encode_validated = _encode  # type: ignore[method-assign]
        return model


# ------------------------------------------------------------------------------------------- rerankers
_FLAG_RERANKER_ARGS = (
    "use_fp16",
    "use_bf16",
    "query_instruction_for_rerank",
    "query_instruction_format",
    "passage_instruction_for_rerank",
    "passage_instruction_format",
    "trust_remote_code",
    "cache_dir",
    "devices",
    "batch_size",
    "query_max_length",
    "max_length",
    "normalize",
    "peft_path",
    "prompt",
    "cutoff_layers",
    "compress_layers",
    "compress_ratio",
)


def _flag_reranker_kwargs(where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """FlagEmbedding's reranker arguments as bgekit's ``Reranker`` arguments."""
    reject_unknown_kwargs(
        where, {k: v for k, v in kwargs.items() if k not in _FLAG_RERANKER_ARGS}, _FLAG_RERANKER_ARGS
    )
    out = dict(kwargs)
    dtype = "fp16" if out.pop("use_fp16", False) else None
    if out.pop("use_bf16", False):
        dtype = "bf16"
    if dtype is not None:
        out["dtype"] = dtype
    for flag_name, name in (
        ("query_instruction_for_rerank", "query_instruction"),
        ("passage_instruction_for_rerank", "passage_instruction"),
    ):
        if flag_name in out:
            out[name] = out.pop(flag_name)
    devices = out.pop("devices", None)
    if devices is not None:
        devices = [devices] if isinstance(devices, str | int) else list(devices)
        # FlagEmbedding accepts GPU numbers (0 or "0") for "cuda:0"
        out["devices"] = [f"cuda:{d}" if isinstance(d, int) or str(d).isdigit() else str(d) for d in devices]
    return out


class _FlagRerankerMixin:
    """``compute_score`` taking FlagEmbedding's extra per-call names (dataloader options are no-ops)."""

    def compute_score(self, sentence_pairs: Any, **kwargs: Any) -> Any:
        kwargs.pop("use_dataloader", None)
        kwargs.pop("num_workers", None)
        kwargs.pop("device", None)
        if "compress_layer" in kwargs:
            kwargs["compress_layers"] = kwargs.pop("compress_layer")
        return super().compute_score(sentence_pairs, **kwargs)  # type: ignore[misc]


class FlagReranker(_FlagRerankerMixin, Reranker):
    """FlagEmbedding's ``FlagReranker`` (cross-encoders: bge-reranker-base/large/v2-m3) on bgekit's engine.

    Example:
        >>> reranker = FlagReranker("BAAI/bge-reranker-v2-m3", use_fp16=True)   # doctest: +SKIP
        >>> reranker.compute_score([["what is panda?", "The giant panda is a bear."]], normalize=True)  # doctest: +SKIP
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(
            model_name_or_path, kind="cross-encoder", **_flag_reranker_kwargs("FlagReranker", kwargs)
        )


class FlagLLMReranker(_FlagRerankerMixin, Reranker):
    """FlagEmbedding's ``FlagLLMReranker`` (bge-reranker-v2-gemma style) on bgekit's engine."""

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, kind="llm", **_flag_reranker_kwargs("FlagLLMReranker", kwargs))


class LayerWiseFlagLLMReranker(_FlagRerankerMixin, Reranker):
    """FlagEmbedding's ``LayerWiseFlagLLMReranker`` (bge-reranker-v2-minicpm-layerwise style).

    The checkpoint's per-layer heads need ``trust_remote_code=True``; a standard HF decoder is scored by
    bgekit's generic layer-wise implementation (final norm + LM head on the chosen layers).
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(
            model_name_or_path, kind="layerwise", **_flag_reranker_kwargs("LayerWiseFlagLLMReranker", kwargs)
        )


class LightWeightFlagLLMReranker(_FlagRerankerMixin, Reranker):
    """FlagEmbedding's ``LightWeightFlagLLMReranker`` (bge-reranker-v2.5-gemma2-lightweight style).

    Token compression runs the checkpoint's own code: pass ``trust_remote_code=True``.
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(
            model_name_or_path,
            kind="lightweight",
            **_flag_reranker_kwargs("LightWeightFlagLLMReranker", kwargs),
        )


_RERANKER_MODEL_CLASSES: dict[str, type[Reranker]] = {
    "encoder-only-base": FlagReranker,
    "decoder-only-base": FlagLLMReranker,
    "decoder-only-layerwise": LayerWiseFlagLLMReranker,
    "decoder-only-lightweight": LightWeightFlagLLMReranker,
}


class FlagAutoReranker:
    """FlagEmbedding's ``FlagAutoReranker.from_finetuned``: the class from ``model_class`` or the checkpoint.

    Without ``model_class`` the kind comes from the checkpoint (its ``bgekit.json``, the table of published
    rerankers, or its architecture), where FlagEmbedding requires a known model name.
    """

    def __init__(self) -> None:
        raise TypeError("use FlagAutoReranker.from_finetuned(name_or_path, ...)")

    @classmethod
    def from_finetuned(
        cls,
        model_name_or_path: str,
        model_class: str | None = None,
        use_fp16: bool = False,
        trust_remote_code: bool | None = None,
        **kwargs: Any,
    ) -> Reranker:
        kwargs.update(use_fp16=use_fp16, trust_remote_code=bool(trust_remote_code))
        if model_class is not None:
            name = getattr(model_class, "value", model_class)
            if name not in _RERANKER_MODEL_CLASSES:
                raise ConfigError(f"model_class={name!r} is not valid; choose one of {sorted(_RERANKER_MODEL_CLASSES)}")
            return _RERANKER_MODEL_CLASSES[name](model_name_or_path, **kwargs)
        return Reranker(model_name_or_path, **_flag_reranker_kwargs("FlagAutoReranker", kwargs))
