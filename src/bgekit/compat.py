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
from bgekit.models import registry

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


_FLAG_EMBEDDER_DEFAULTS: dict[str, Any] = {
    "normalize_embeddings": True,
    "use_fp16": True,
    "batch_size": 256,
    "query_max_length": 512,
    "passage_max_length": 512,
}
"""The defaults every FlagEmbedding 1.4.2 embedder class shares (``FlagEmbedding/abc/inference/
AbsEmbedder.py``: ``batch_size=256``, ``query_max_length=512``, ``passage_max_length=512``, ``use_fp16=True``,
``normalize_embeddings=True``); each class below adds its pooling, format and kind."""


def _flag_kwargs_to_bgekit(
    where: str, kwargs: dict[str, Any], defaults: dict[str, Any], extra_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    valid = _FLAG_MODEL_ARGS + extra_args
    reject_unknown_kwargs(where, {k: v for k, v in kwargs.items() if k not in valid}, valid)
    merged = {**_FLAG_EMBEDDER_DEFAULTS, **defaults, **kwargs}
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
        self._call_defaults = {"convert_to_numpy": kwargs.get("convert_to_numpy", True)}
        defaults = {"pooling_method": "cls", "query_instruction_format": "{}{}"}
        super().__init__(model_name_or_path, **_flag_kwargs_to_bgekit("FlagModel", kwargs, defaults))


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
        special = _special_embedder_class(model_name_or_path, kwargs.pop("model_class", None))
        if special is not None:
            table_format = registry.lookup(model_name_or_path).get("query_instruction_format")
            if table_format is not None:
                kwargs.setdefault("query_instruction_format", table_format)
            return special(model_name_or_path, **kwargs)
        convert_to_numpy = kwargs.pop("convert_to_numpy", True)
        model = Embedder(model_name_or_path, **_flag_kwargs_to_bgekit("FlagAutoModel", kwargs, {}))
        if not convert_to_numpy:
            model._call_defaults = {"convert_to_numpy": False}
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
                raise ConfigError(
                    f"model_class={name!r} is not valid; choose one of {sorted(_RERANKER_MODEL_CLASSES)}"
                )
            return _RERANKER_MODEL_CLASSES[name](model_name_or_path, **kwargs)
        return Reranker(model_name_or_path, **_flag_reranker_kwargs("FlagAutoReranker", kwargs))


# ----------------------------------------------------------------------------- M3 and LLM embedders
_MODEL_CLASSES = ("encoder-only-base", "encoder-only-m3", "decoder-only-base", "decoder-only-icl")


def _special_embedder_class(model_name_or_path: str, model_class: Any) -> Any:
    """The compat class ``FlagAutoModel`` hands an M3, LLM or ICL checkpoint to (None: ``Embedder``)."""
    import os

    if model_class is not None:
        name = str(getattr(model_class, "value", model_class))
        if name not in _MODEL_CLASSES:
            raise ConfigError(f"model_class={name!r} is not valid; choose one of {list(_MODEL_CLASSES)}")
        kind = {"encoder-only-base": None, "encoder-only-m3": "m3", "decoder-only-base": "decoder"}.get(
            name, "icl"
        )
    else:
        kind = registry.lookup(model_name_or_path).get("kind")
        path = os.path.expanduser(str(model_name_or_path))
        heads = ("colbert_linear.pt", "sparse_linear.pt")
        if kind is None and all(os.path.isfile(os.path.join(path, f)) for f in heads):
            kind = "m3"
    return {"m3": BGEM3FlagModel, "decoder": FlagLLMModel, "icl": FlagICLModel}.get(kind or "")


_M3_ARGS = ("colbert_dim", "return_dense", "return_sparse", "return_colbert_vecs")
_ICL_ARGS = ("suffix", "examples_instruction_format")


def _unescape_formats(kwargs: dict[str, Any]) -> None:
    # FlagEmbedding turns a literal backslash-n (as typed on a command line) into a newline
    for key in ("query_instruction_format", "passage_instruction_format"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = kwargs[key].replace("\\n", "\n")


class BGEM3FlagModel(Embedder):
    """FlagEmbedding's ``BGEM3FlagModel``: dense, lexical and ColBERT outputs of BGE-M3 in one pass.

    Defaults are FlagEmbedding's: CLS pooling, normalised, max length 512 on both sides, batch size 256,
    fp16 requested (fp32 on CPU), ``return_dense=True`` only. ``colbert_dim`` keeps the first dimensions
    of the ColBERT vectors (FlagEmbedding needs it to equal the head file's size); ``truncate_dim``
    truncates both dense and ColBERT vectors, as FlagEmbedding does.

    Example:
        >>> model = BGEM3FlagModel("BAAI/bge-m3", use_fp16=True)   # doctest: +SKIP
        >>> out = model.encode(["hello"], return_sparse=True)   # doctest: +SKIP
        >>> model.convert_id_to_token(out["lexical_weights"])   # doctest: +SKIP
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        self.return_dense = bool(kwargs.pop("return_dense", True))
        self.return_sparse = bool(kwargs.pop("return_sparse", False))
        self.return_colbert_vecs = bool(kwargs.pop("return_colbert_vecs", False))
        kwargs.pop("convert_to_numpy", None)  # FlagEmbedding ignores it for M3 too
        colbert_dim = kwargs.pop("colbert_dim", -1)
        _unescape_formats(kwargs)
        defaults = {"pooling_method": "cls", "kind": "m3"}
        converted = _flag_kwargs_to_bgekit("BGEM3FlagModel", kwargs, defaults, _M3_ARGS)
        if colbert_dim is not None and colbert_dim > 0:
            converted["colbert_dim"] = int(colbert_dim)
        super().__init__(model_name_or_path, **converted)
        truncate = self.settings.truncate_dim
        if truncate is not None and self.settings.colbert_dim is None and self.m3_heads is not None:
            self.settings.colbert_dim = min(truncate, self.m3_heads.colbert_size)

    def _flags(self, dense: bool | None, sparse: bool | None, colbert: bool | None) -> dict[str, Any]:
        return {
            "return_dense": self.return_dense if dense is None else dense,
            "return_sparse": self.return_sparse if sparse is None else sparse,
            "return_colbert_vecs": self.return_colbert_vecs if colbert is None else colbert,
        }

    def encode_queries(  # type: ignore[override]
        self,
        queries: str | list[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        return_dense: bool | None = None,
        return_sparse: bool | None = None,
        return_colbert_vecs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.pop("convert_to_numpy", None)
        flags = self._flags(return_dense, return_sparse, return_colbert_vecs)
        return super().encode_queries(
            queries, batch_size=batch_size, max_length=max_length, **flags, **kwargs
        )

    def encode_corpus(  # type: ignore[override]
        self,
        corpus: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        return_dense: bool | None = None,
        return_sparse: bool | None = None,
        return_colbert_vecs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.pop("convert_to_numpy", None)
        flags = self._flags(return_dense, return_sparse, return_colbert_vecs)
        return super().encode_corpus(corpus, batch_size=batch_size, max_length=max_length, **flags, **kwargs)

    def encode(  # type: ignore[override]
        self,
        sentences: str | list[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        return_dense: bool | None = None,
        return_sparse: bool | None = None,
        return_colbert_vecs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.pop("convert_to_numpy", None)
        flags = self._flags(return_dense, return_sparse, return_colbert_vecs)
        return super().encode(sentences, batch_size=batch_size, max_length=max_length, **flags, **kwargs)

    def compute_score(  # type: ignore[override]
        self,
        sentence_pairs: Any,
        batch_size: int | None = None,
        max_query_length: int | None = None,
        max_passage_length: int | None = None,
        weights_for_different_modes: list[float] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return super().compute_score(
            sentence_pairs,
            batch_size=batch_size,
            max_query_length=max_query_length,
            max_passage_length=max_passage_length,
            weights_for_different_modes=weights_for_different_modes,
            **kwargs,
        )


def _llm_kwargs(
    where: str, kwargs: dict[str, Any], defaults: dict[str, Any], extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    _unescape_formats(kwargs)
    converted = _flag_kwargs_to_bgekit(where, kwargs, defaults, extra)
    if converted["dtype"] is None:
        # use_fp16=False means fp32 in FlagEmbedding, not bgekit's bf16 LLM default
        converted["dtype"] = "fp32"
    # FlagEmbedding tokenizes as the tokenizer does, with no EOS of its own
    converted.setdefault("append_eos", False)
    return converted


class FlagLLMModel(Embedder):
    """FlagEmbedding's ``FlagLLMModel``: a decoder-only embedder pooled on the last token.

    Defaults are FlagEmbedding's: ``"Instruct: {}\\nQuery: {}"`` query format, normalised, max length 512,
    batch size 256, fp16 requested (fp32 on CPU), and no EOS appended beyond what the tokenizer adds.

    Example:
        >>> model = FlagLLMModel("BAAI/bge-multilingual-gemma2",
        ...     query_instruction_for_retrieval="Given a web search query, retrieve relevant passages.",
        ...     query_instruction_format="<instruct>{}\\n<query>{}")   # doctest: +SKIP
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        self._call_defaults = {"convert_to_numpy": kwargs.pop("convert_to_numpy", True)}
        defaults = {
            "pooling_method": "last_token",
            "query_instruction_format": "Instruct: {}\nQuery: {}",
            "kind": "decoder",
        }
        super().__init__(model_name_or_path, **_llm_kwargs("FlagLLMModel", kwargs, defaults))


class FlagICLModel(FlagLLMModel):
    """FlagEmbedding's ``FlagICLModel`` (bge-en-icl): few-shot examples before each query.

    ``examples_for_task`` is a list of ``{"instruct", "query", "response"}`` dicts; each becomes
    ``examples_instruction_format`` and they are joined by blank lines before the query, which ends with
    ``suffix`` (``"\\n<response>"``). Passages are encoded plain.

    Example:
        >>> model = FlagICLModel("BAAI/bge-en-icl", examples_for_task=[
        ...     {"instruct": "Given a claim, find documents.", "query": "q", "response": "p"}])   # doctest: +SKIP
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        suffix = kwargs.pop("suffix", "\n<response>")
        example_format = kwargs.pop("examples_instruction_format", "<instruct>{}\n<query>{}\n<response>{}")
        self._call_defaults = {"convert_to_numpy": kwargs.pop("convert_to_numpy", True)}
        defaults = {
            "pooling_method": "last_token",
            "query_instruction_format": "<instruct>{}\n<query>{}",
            "kind": "icl",
        }
        Embedder.__init__(
            self, model_name_or_path, **_llm_kwargs("FlagICLModel", kwargs, defaults, _ICL_ARGS)
        )
        self.icl_suffix = suffix.replace("\\n", "\n")
        self.examples_instruction_format = example_format.replace("\\n", "\n")
