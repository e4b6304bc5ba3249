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

from bgekit.errors import reject_unknown_kwargs
from bgekit.inference.embedder import Embedder

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
