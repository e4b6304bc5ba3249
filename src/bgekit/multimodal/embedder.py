"""The multimodal embedder: texts, images, and images with a text (composed queries) in, vectors out.

It runs through bgekit's one batching engine and device pool like the text ``Embedder``: every item (a
text, an image, or both) is one input whose length is its text tokens plus its image's patch tokens, so a
batch holds as many photos as the token budget allows, sorted with texts of similar cost.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from bgekit.engine import BatchEngine, DevicePool, pad_sequences, tokenize_texts
from bgekit.engine.pool import split_evenly
from bgekit.errors import ConfigError, InputError, ModelLoadError, reject_unknown_kwargs
from bgekit.inference.embedder import file_fingerprint
from bgekit.inference.heads import finish_dense
from bgekit.inference.inputs import apply_instruction, check_unicode, corpus_item_text
from bgekit.inference.runtime import check_batch_size, resolve_runtime
from bgekit.models.loading import load_config, load_pretrained, load_tokenizer, resolve_model_folder
from bgekit.models.settings import write_saved_settings
from bgekit.multimodal.images import ImageInputError, check_images, is_image, to_rgb
from bgekit.multimodal.settings import (
    SETTINGS_SECTION,
    MultimodalSettings,
    detect_kind,
    resolve_multimodal_settings,
)

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_TOKENS_PER_BATCH = 16384
"""Text plus patch tokens per batch on GPUs (CPUs use the engine's CPU default)."""

_SETTING_ARGS = tuple(f for f in MultimodalSettings.field_names() if f != "dtype")
_RUNTIME_ARGS = (
    "dtype",
    "device",
    "devices",
    "batch_size",
    "max_tokens_per_batch",
    "show_progress",
    "revision",
    "cache_dir",
    "worker_timeout",
)

Role = Literal["query", "passage", "plain"]


class _Factory:
    """Builds the same embedder on a given device inside a worker process (picklable)."""

    def __init__(self, folder: str, kwargs: dict[str, Any]) -> None:
        self.folder, self.kwargs = folder, kwargs

    def __call__(self, device: str) -> MultimodalEmbedder:
        return MultimodalEmbedder(self.folder, device=device, **self.kwargs)


class MultimodalEmbedder:
    """Embed texts, images and composed image + text queries into one vector space (BGE-VL, Visualized-BGE).

    Args:
        model_name_or_path: a hub name (``"BAAI/BGE-VL-base"``) or a local folder holding a CLIP checkpoint
            with its tokenizer and image processor, or a Visualized-BGE folder (see
            :func:`bgekit.multimodal.visualized.convert_visualized_bge`); the folder's ``bgekit.json`` says
            which, and ``MultimodalEmbedder(...)`` returns the class of that kind.
        normalize: L2-normalise outputs (default True, as the official encoders).
        query_instruction / passage_instruction (and their ``*_format``): text put before the text part of
            queries / corpus items (none by default: BGE-VL's CLIP models use none).
        max_length: token limit of texts (default: the text tower's limit, 77 for CLIP).
        dtype: ``"fp32"`` (default), ``"fp16"``, ``"bf16"`` or ``"auto"``, as ``Embedder``.
        device / devices: one device, or several (one worker process each, the work split between them).
        batch_size: most items in one batch.
        max_tokens_per_batch: most text plus image patch tokens in one batch (the engine's token budget).
        show_progress: progress bar (``None``: only for long inputs).

    Settings not given are read from the folder's ``bgekit.json`` (section ``multimodal_embedder``), then
    bgekit's table of published checkpoints, then the folder's ``config.json``.

    Example:
        >>> model = MultimodalEmbedder("BAAI/BGE-VL-base")                         # doctest: +SKIP
        >>> q = model.encode_queries("make the background dark", images="cat.jpg")   # doctest: +SKIP
        >>> p = model.encode_corpus(images=["a.jpg", "b.jpg"])                        # doctest: +SKIP
        >>> scores = p @ q                                                            # doctest: +SKIP
    """

    def __new__(cls, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> MultimodalEmbedder:
        # one loader for every multimodal kind: the saved settings (or ``kind=``) pick the class
        if cls is MultimodalEmbedder:
            kind = kwargs.get("kind") or detect_kind(os.fspath(model_name_or_path))
            if kind == "visualized_bge":
                from bgekit.multimodal.visualized import VisualizedBGEEmbedder

                return super().__new__(VisualizedBGEEmbedder)
            if kind == "mllm":
                from bgekit.multimodal.mllm import MLLMEmbedder

                return super().__new__(MLLMEmbedder)
        return super().__new__(cls)

    def __init__(self, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> None:
        valid = _SETTING_ARGS + _RUNTIME_ARGS
        reject_unknown_kwargs(
            "MultimodalEmbedder", {k: v for k, v in kwargs.items() if k not in valid}, valid
        )
        model_name_or_path = os.fspath(model_name_or_path)
        self.name_or_path = model_name_or_path
        self.folder = resolve_model_folder(
            model_name_or_path, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir")
        )
        # multimodal checkpoints bgekit runs are built into transformers: their shipped code never runs
        self.config = load_config(self.folder, trust_remote_code=False)
        explicit = {k: kwargs.get(k) for k in _SETTING_ARGS}
        self.settings, self.settings_origin = resolve_multimodal_settings(
            model_name_or_path, self.folder, self.config, explicit
        )
        self.batch_size = int(kwargs.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.show_progress = kwargs.get("show_progress")
        runtime = resolve_runtime(kwargs, self.settings.dtype or "fp32", DEFAULT_MAX_TOKENS_PER_BATCH)
        self.devices, self.device = runtime.devices, runtime.device
        self.max_tokens_per_batch = runtime.max_tokens_per_batch
        self.dtype, self.torch_dtype = runtime.dtype, runtime.torch_dtype
        self._requested_dtype = runtime.requested_dtype
        self.worker_timeout = runtime.worker_timeout
        self._init_towers()

        self._model: Any = None
        self._pool: DevicePool | None = None
        if len(self.devices) == 1:
            self._load_model()

    def _init_towers(self) -> None:
        """Tokenizer, image preprocessing, ``max_length``, ``dim`` and ``image_tokens`` of this kind."""
        # CLIP pools the first end-of-text token: padding must go on the right
        self.tokenizer = load_tokenizer(self.folder, padding_side="right")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_processor = _load_image_processor(self.folder)
        text_config, vision_config = self.config.text_config, self.config.vision_config
        limit = int(text_config.max_position_embeddings)
        if self.settings.max_length is not None and self.settings.max_length > limit:
            raise ConfigError(
                f"max_length={self.settings.max_length} exceeds the text tower's {limit} positions"
            )
        self.max_length = self.settings.max_length or limit
        self.dim = int(self.config.projection_dim)
        self.image_tokens = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2 + 1
        """Tokens one image costs in the engine's budget: its patches and the class token."""

    # ----------------------------------------------------------------------------------------- loading
    def _load_model(self) -> Any:
        if self._model is None:
            from transformers import CLIPModel

            self._model = load_pretrained(CLIPModel, self.folder, dtype=self.torch_dtype, device=self.device)
        return self._model

    @property
    def model(self) -> Any:
        """The ``transformers`` model, loaded on first use in multi-device mode."""
        return self._load_model()

    def _get_pool(self) -> DevicePool:
        if self._pool is None or self._pool.closed:
            kwargs: dict[str, Any] = {k: getattr(self.settings, k) for k in _SETTING_ARGS}
            kwargs.update(
                dtype=self._requested_dtype,
                batch_size=self.batch_size,
                max_tokens_per_batch=self.max_tokens_per_batch,
                show_progress=False,
            )
            self._pool = DevicePool(_Factory(self.folder, kwargs), self.devices, timeout=self.worker_timeout)
        return self._pool

    def close(self) -> None:
        """Stop worker processes, if any (also done at exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> MultimodalEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- encoding
    def encode_queries(self, queries: Any = None, *, images: Any = None, **kwargs: Any) -> Any:
        """Encode queries: texts, images, or both (composed: image ``i`` with text ``i``), with the
        query instruction before each text. Takes ``encode``'s keyword arguments.

        Example:
            >>> model.encode_queries("make it night", images="cat.jpg")   # doctest: +SKIP
        """
        return self._encode(queries, images, "query", **kwargs)

    def encode_corpus(self, corpus: Any = None, *, images: Any = None, **kwargs: Any) -> Any:
        """Encode corpus items: texts (strings or ``{"title", "text"}`` dicts), images, or both (an image
        with its caption), with the passage instruction before each text.

        Example:
            >>> model.encode_corpus(images=["a.jpg", "b.png"])   # doctest: +SKIP
        """
        return self._encode(corpus, images, "passage", **kwargs)

    def encode(
        self,
        texts: Any = None,
        images: Any = None,
        *,
        instruction: str | None = None,
        instruction_format: str = "{}{}",
        **kwargs: Any,
    ) -> Any:
        """Encode texts, images, or images with texts, as they are (no instruction unless given).

        Args:
            texts: a string or a list of strings (``None`` entries where an item has only an image).
            images: one image or a list (``None`` entries where an item has only a text): file paths,
                bytes of an image file, ``PIL.Image`` images, or uint8 arrays (H, W[, C]).
            max_length: token limit of texts (default: the model's).
            batch_size, show_progress, convert_to_numpy, convert_to_tensor: as ``Embedder.encode``.

        With both ``texts`` and ``images`` the lists pair up item by item: an image and a text at the same
        position are one composed item (BGE-VL: the normalised sum of the text and image features).

        Returns:
            float32 ``np.ndarray`` (n, dim), or (dim,) when one item was given (a string, one image, or one
            of each); a torch tensor with ``convert_to_tensor=True``.

        Raises:
            ImageInputError: naming every image that is missing, unreadable, corrupt or of an unsupported
                mode; raised before any model runs, so nothing is half-encoded.
            InputError: other bad inputs (lists of different lengths, an item with neither part).

        Example:
            >>> model.encode(["a photo of a cat"]).shape   # doctest: +SKIP
            (1, 512)
        """
        texts_in = texts
        if instruction:
            texts_in = _map_texts(
                texts, lambda items: apply_instruction(items, instruction, instruction_format)
            )
        return self._encode(texts_in, images, "plain", **kwargs)

    def _encode(
        self,
        texts: Any,
        images: Any,
        role: Role,
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress: bool | None = None,
    ) -> Any:
        text_list, image_list, single = self.prepare_items(texts, images, role)
        limit = self._check_max_length(max_length)
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        show = self.show_progress if show_progress is None else show_progress
        n = len(text_list)
        if len(self.devices) > 1 and n > 1:
            ranges = split_evenly(n, len(self.devices) * 4)
            parts = self._get_pool().map(
                "encode_items",
                [(text_list[a:b], image_list[a:b], limit, batch_size, False, a) for a, b in ranges],
            )
            vectors = np.concatenate(parts, axis=0) if parts else np.zeros((0, self.dim), np.float32)
        else:
            vectors = self.encode_items(text_list, image_list, limit, batch_size, show)
        result = vectors[0] if single else vectors
        return torch.from_numpy(result) if (convert_to_tensor or not convert_to_numpy) else result

    def _check_max_length(self, max_length: Any) -> int:
        if max_length is None:
            return self.max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length={max_length!r} is not valid; expected an integer >= 2")
        return min(max_length, self.max_length_limit)

    def prepare_items(self, texts: Any, images: Any, role: Role) -> tuple[list[str | None], list[Any], bool]:
        """Pair ``texts`` and ``images`` into items, apply the role's instruction, check every image.

        Returns:
            The items' texts (``None`` where an item has none), their checked images (paths, or RGB PIL
            images for in-memory inputs; ``None`` where an item has none), and whether one item was given.
        """
        text_list, text_single = _as_optional_texts(texts, "queries" if role == "query" else "texts", role)
        image_list, image_single = _as_optional_images(images)
        if text_list is None and image_list is None:
            raise InputError("give texts, images or both; both are None")
        if (
            text_list is not None
            and image_list is not None
            and (len(text_list) != len(image_list) or text_single != image_single)
        ):
            raise InputError(
                f"texts and images pair up item by item, but {len(text_list)} text(s) and "
                f"{len(image_list)} image(s) were given"
                + (" (one of them a single item, the other a list)" if text_single != image_single else "")
            )
        n = len(text_list if text_list is not None else image_list)  # type: ignore[arg-type]
        text_list = text_list if text_list is not None else [None] * n
        image_list = image_list if image_list is not None else [None] * n
        for position, (text, image) in enumerate(zip(text_list, image_list, strict=True)):
            if text is None and image is None:
                raise InputError(f"item {position} has neither a text nor an image")
        if role != "plain":
            settings = self.settings
            instruction, fmt = (
                (settings.query_instruction, settings.query_instruction_format)
                if role == "query"
                else (settings.passage_instruction, settings.passage_instruction_format)
            )
            if instruction:
                text_list = [None if t is None else fmt.format(instruction, t) for t in text_list]
        checked = check_images(image_list)
        return text_list, checked, bool(text_single or image_single)

    token_features = True
    """Whether the text protocol below (:meth:`tokenize`, :meth:`encode_features`) applies: ``False`` for a
    model that reads whole prompts (BGE-VL-MLLM), which the server then runs through the item protocol."""

    def encode_items(
        self,
        texts: Sequence[str | None],
        images: Sequence[Any],
        max_length: int,
        batch_size: int,
        show_progress: bool | None = False,
        position_offset: int = 0,
    ) -> np.ndarray:
        """Run the model over prepared items (see :meth:`prepare_items`) on this process's device.

        Returns:
            float32 (n, dim), in input order.
        """
        prepared = self.tokenize_items(texts, images, max_length)
        return self.encode_tokenized(
            prepared,
            images,
            batch_size=batch_size,
            show_progress=show_progress,
            position_offset=position_offset,
        )

    def tokenize_items(
        self, texts: Sequence[str | None], images: Sequence[Any], max_length: int, *, truncate: bool = True
    ) -> list[Any]:
        """What :meth:`encode_tokenized` takes for prepared items: each text's token features (``None``
        where an item has no text). The part of :meth:`encode_items` that needs no model: the server runs
        it off the model's thread and batches many requests' items through one :meth:`encode_tokenized`.

        ``truncate=False``: nothing is cut; the caller checks the lengths.

        Example:
            >>> model.tokenize_items(["a cat", None], [None, "cat.jpg"], 77)   # doctest: +SKIP
            [{'input_ids': [49406, 320, 2368, 49407], ...}, None]
        """
        features: list[Any] = [None] * len(texts)
        with_text = [i for i, t in enumerate(texts) if t is not None]
        if with_text:
            tokenized = tokenize_texts(
                self.tokenizer, [str(texts[i]) for i in with_text], max_length, truncation=truncate
            )
            for i, feature in zip(with_text, tokenized, strict=True):
                features[i] = feature
        return features

    def encode_tokenized(
        self,
        prepared: Sequence[Any],
        images: Sequence[Any],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = False,
        position_offset: int = 0,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """Vectors of items given as :meth:`tokenize_items` output and checked (or decoded RGB) images, on
        this process's device; float32 (n, dim) in input order.

        Example:
            >>> model.encode_tokenized(model.tokenize_items(["a cat"], [None], 77), [None]).shape   # doctest: +SKIP
            (1, 512)
        """
        return self._run(
            list(prepared),
            list(images),
            self.batch_size if batch_size is None else check_batch_size(batch_size),
            show_progress,
            position_offset,
            self.settings.normalize if normalize is None else normalize,
        )

    def _run(
        self,
        features: Sequence[dict[str, list[int]] | None],
        images: Sequence[Any],
        batch_size: int,
        show_progress: bool | None,
        position_offset: int,
        normalize: bool,
    ) -> np.ndarray:
        """The engine over items given as token features and checked images (either may be ``None``)."""
        n = len(features)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = [
            (len(features[i]["input_ids"]) if features[i] is not None else 0)  # type: ignore[index]
            + (self.image_tokens if images[i] is not None else 0)
            for i in range(n)
        ]
        model = self._load_model()
        pad_id = int(self.tokenizer.pad_token_id)

        def step(indices: list[int]) -> torch.Tensor:
            text_rows = [i for i in indices if features[i] is not None]
            image_rows = [i for i in indices if images[i] is not None]
            total = torch.zeros(len(indices), self.dim, dtype=torch.float32, device=self.device)
            where = {item: row for row, item in enumerate(indices)}
            with torch.inference_mode():
                if text_rows:
                    batch = pad_sequences([features[i] for i in text_rows], pad_id)  # type: ignore[misc]
                    batch = {k: v.to(self.device) for k, v in batch.items() if k != "token_type_ids"}
                    text_features = model.get_text_features(**batch).float()
                    total[[where[i] for i in text_rows]] += text_features
                if image_rows:
                    pixels = self.pixel_values([images[i] for i in image_rows])
                    image_features = model.get_image_features(pixel_values=pixels).float()
                    total[[where[i] for i in image_rows]] += image_features
            return finish_dense(total, truncate_dim=None, normalize=normalize).cpu()

        engine = BatchEngine(
            batch_size=batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
            position_offset=position_offset,
        )
        return engine.run(lengths, step).numpy()

    # ---------------------------------------------------------- the text protocol the server speaks
    @property
    def max_length_limit(self) -> int:
        """The longest text the text tower takes (``Embedder``'s name for it)."""
        return int(self.config.text_config.max_position_embeddings)

    backend = "torch"

    def prepare(
        self, texts: list[str], kind: Literal["query", "passage", "text"], max_length: int | None = None
    ) -> tuple[list[str], int]:
        """Texts as the model reads them (the query or passage instruction applied; none for ``"text"``)
        and their token limit, as ``Embedder.prepare``: with :meth:`tokenize` and :meth:`encode_features`
        the server batches many requests' texts through one run of the engine.

        Example:
            >>> model.prepare(["a cat"], "query")   # doctest: +SKIP
            (['a cat'], 77)
        """
        settings = self.settings
        if kind == "query":
            instruction, fmt = settings.query_instruction, settings.query_instruction_format
        elif kind == "passage":
            instruction, fmt = settings.passage_instruction, settings.passage_instruction_format
        elif kind == "text":
            instruction, fmt = None, "{}{}"
        else:
            raise ConfigError(f"kind={kind!r} is not valid; choose 'query', 'passage' or 'text'")
        return apply_instruction(list(texts), instruction, fmt), self._check_max_length(max_length)

    def tokenize(
        self, texts: list[str], max_length: int, *, truncate: bool = True
    ) -> list[dict[str, list[int]]]:
        """Token ids of prepared texts, one feature dict per text, unpadded (``truncate=False``: nothing
        is cut, the caller checks the length)."""
        return tokenize_texts(self.tokenizer, texts, max_length, truncation=truncate)

    def encode_features(
        self,
        features: Sequence[dict[str, list[int]]],
        heads: Any = None,
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = False,
        position_offset: int = 0,
    ) -> np.ndarray:
        """Text vectors of tokenized texts (see :meth:`tokenize`) on this process's device, as
        ``Embedder.encode_features`` (``heads`` must be ``None``: a CLIP model has only dense vectors).
        """
        if heads is not None:
            raise ConfigError("a multimodal embedder has only dense vectors (no sparse or ColBERT heads)")
        return self._run(
            list(features),
            [None] * len(features),
            self.batch_size if batch_size is None else check_batch_size(batch_size),
            show_progress,
            position_offset,
            self.settings.normalize if normalize is None else normalize,
        )

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """The model's input pixels of checked images (paths are decoded here), by its own processor."""
        rgb = []
        for image in images:
            try:
                rgb.append(to_rgb(image) if isinstance(image, str) else image)
            except (OSError, ValueError) as exc:  # changed on disk since the call checked it
                raise ImageInputError(f"image {image!r} can no longer be read: {exc}") from exc
        pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, dtype=self.torch_dtype)

    # ---------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Save weights (safetensors), tokenizer, image processor and ``bgekit.json``, so
        ``MultimodalEmbedder(path)`` reloads it as it is.

        Example:
            >>> model.save_pretrained("my-bge-vl/")   # doctest: +SKIP
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        settings = self.settings.to_dict()
        if settings.get("dtype") is None:
            settings.pop("dtype")
        write_saved_settings(path, SETTINGS_SECTION, settings)

    def fingerprint(self, *, include_runtime: bool = True) -> str:
        """A hash of everything that changes this embedder's outputs (files, settings and, with
        ``include_runtime``, the dtype); ``SearchIndex`` keeps the one without runtime as the model's
        identity."""
        settings = self.settings.to_dict()
        if not include_runtime:
            settings.pop("dtype", None)
        digest = hashlib.sha256()
        digest.update(repr(sorted(settings.items())).encode())
        if include_runtime:
            digest.update(self.dtype.encode())
        digest.update(file_fingerprint(self.folder).encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"{type(self).__name__}({self.name_or_path!r}, kind={s.kind!r}, normalize={s.normalize}, "
            f"dim={self.dim}, dtype={self.dtype!r}, devices={self.devices})"
        )


def _load_image_processor(folder: str) -> Any:
    from transformers import AutoImageProcessor

    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        raise ModelLoadError(
            f"{folder!r} has no preprocessor_config.json: a multimodal checkpoint needs its image processor "
            "beside the weights (save it with processor.save_pretrained)"
        )
    try:
        # the slow (PIL) processor: the one the official BGE-VL code runs, and it needs no torchvision
        return AutoImageProcessor.from_pretrained(folder, use_fast=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the image processor of {folder!r}: {exc}") from exc


def _map_texts(texts: Any, apply: Any) -> Any:
    """Apply an instruction to the strings of ``texts`` (one string, or a list with ``None`` gaps)."""
    if texts is None:
        return None
    if isinstance(texts, str):
        return apply([texts])[0]
    if isinstance(texts, Sequence):
        return [t if not isinstance(t, str) else apply([t])[0] for t in texts]
    return texts  # refused with a clear error by _as_optional_texts


def _as_optional_texts(texts: Any, what: str, role: Role) -> tuple[list[str | None] | None, bool]:
    """Validate texts: one string, or a list of strings with ``None`` gaps (corpus items may be
    ``{"title", "text"}`` dicts)."""
    if texts is None:
        return None, False
    if isinstance(texts, str):
        return [check_unicode(texts, what)], True
    if role == "passage" and isinstance(texts, Mapping):
        return [corpus_item_text(texts, 0, what)], True
    if not isinstance(texts, Sequence) or isinstance(texts, bytes):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    out: list[str | None] = []
    for i, text in enumerate(texts):
        if text is None:
            out.append(None)
        elif isinstance(text, str):
            out.append(check_unicode(text, f"{what}[{i}]"))
        elif role == "passage" and isinstance(text, Mapping):
            out.append(corpus_item_text(text, i, what))
        else:
            raise InputError(
                f"{what}[{i}] is {text!r:.60} ({type(text).__name__}); expected a string or None"
            )
    return out, False


def _as_optional_images(images: Any) -> tuple[list[Any] | None, bool]:
    """One image or a list of images (``None`` gaps allowed); a 4-d array is a batch of images."""
    if images is None:
        return None, False
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    if is_image(images):
        return [images], True
    if isinstance(images, Sequence):
        return list(images), False
    raise InputError(
        f"images must be an image (a path, bytes, a PIL image, an array) or a list of them, got "
        f"{type(images).__name__}"
    )
