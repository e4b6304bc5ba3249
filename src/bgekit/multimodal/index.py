"""Image corpora in a ``SearchIndex``: text-to-image, image-to-image and composed-query search.

A :class:`MultimodalIndex` is a :class:`~bgekit.index.SearchIndex` (the same exact or approximate dense
search, save, load and ``recall``) whose documents may be images, with or without a caption, and whose
queries may be texts, images or an image with a text. Each document's image reference (its path) is kept
beside the index in ``images.json``; a hit's ``id`` names the image (its path relative to the folder for a
folder corpus) and its ``text`` is the caption ("" when there is none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.index.ann import AnnConfig
from bgekit.index.search_index import META_FILE, Mode, SearchIndex, checked_search_args, model_identity
from bgekit.inference.arrays import dense_array
from bgekit.io import iter_jsonl
from bgekit.multimodal.images import IMAGE_SUFFIXES

IMAGES_FILE = "images.json"
"""Beside an index's files: the image reference of each document (``null`` for text-only ones)."""
IMAGE_KEYS = ("image", "image_path")
CAPTION_KEYS = ("text", "caption")


def image_corpus(corpus: Any) -> tuple[list[str], list[str | None], list[Any]]:
    """``(ids, captions, images)`` of an image corpus.

    ``corpus`` is one of:

    - a folder: every image file under it (``.jpg``, ``.png``, ``.webp``...), sorted, ids their paths
      relative to the folder, no captions;
    - a JSONL file: rows ``{"_id"/"id", "image", "text"/"caption"}`` (``image`` relative to the file's
      folder or absolute; a row without an image is a text document; ids default to the line number);
    - a list of image paths, or of dicts as the JSONL rows (``image`` may then be a PIL image or an array;
      ids default to the position).

    Raises:
        DataFormatError / InputError: naming the file and line, or the position, of a bad row.

    Example:
        >>> ids, captions, images = image_corpus("photos/")   # doctest: +SKIP
    """
    if isinstance(corpus, str | os.PathLike):
        path = os.fspath(corpus)
        if os.path.isdir(path):
            return _folder_corpus(path)
        if os.path.isfile(path):
            return _jsonl_corpus(path)
        raise InputError(
            f"image corpus {path!r} does not exist (expected a folder of images or a JSONL file)"
        )
    if not isinstance(corpus, Sequence) or isinstance(corpus, bytes):
        raise InputError(f"an image corpus is a folder, a JSONL file or a list, got {type(corpus).__name__}")
    rows = []
    for position, item in enumerate(corpus):
        if isinstance(item, str | os.PathLike):
            item = {"image": os.fspath(item), "id": os.fspath(item)}
        if not isinstance(item, Mapping):
            raise InputError(
                f"corpus[{position}] is {type(item).__name__}; expected an image path or a dict with 'image'"
            )
        rows.append((position, item))
    return _rows_corpus(rows, None, lambda pos: f"corpus[{pos}]")


def _folder_corpus(folder: str) -> tuple[list[str], list[str | None], list[Any]]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append(os.path.join(root, name))
    if not found:
        raise InputError(f"folder {folder!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    ids = [os.path.relpath(path, folder).replace(os.sep, "/") for path in found]
    return ids, [None] * len(found), [os.path.abspath(path) for path in found]


def _jsonl_corpus(path: str) -> tuple[list[str], list[str | None], list[Any]]:
    rows = []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, line_no)
        rows.append((line_no, row))
    return _rows_corpus(rows, os.path.dirname(os.path.abspath(path)), lambda line: f"{path}:{line}")


def _rows_corpus(
    rows: Sequence[tuple[int, Mapping[str, Any]]], base: str | None, where: Any
) -> tuple[list[str], list[str | None], list[Any]]:
    ids: list[str] = []
    captions: list[str | None] = []
    images: list[Any] = []
    seen: set[str] = set()
    for number, row in rows:
        doc_id = str(row.get("_id", row.get("id", number)))
        if doc_id in seen:
            raise InputError(f"{where(number)}: duplicate document id {doc_id!r}")
        seen.add(doc_id)
        image = next((row[k] for k in IMAGE_KEYS if row.get(k) is not None), None)
        caption = next((row[k] for k in CAPTION_KEYS if row.get(k) is not None), None)
        if caption is not None and not isinstance(caption, str):
            raise InputError(f"{where(number)}: the caption is {type(caption).__name__}; expected a string")
        if image is None and caption is None:
            raise InputError(f"{where(number)}: the row has neither an image ({IMAGE_KEYS}) nor a text")
        if isinstance(image, str) and base is not None and not os.path.isabs(image):
            image = os.path.join(base, image)
        if isinstance(image, str):
            image = os.path.abspath(image)
        ids.append(doc_id)
        captions.append(caption)
        images.append(image)
    if not ids:
        raise InputError("the image corpus is empty: nothing to index")
    return ids, captions, images


class MultimodalIndex(SearchIndex):
    """A :class:`SearchIndex` of images (and captioned images, and texts) built by a
    :class:`~bgekit.multimodal.MultimodalEmbedder`, searched by text, image, or image + text.

    Example:
        >>> index = MultimodalIndex.build(model, "photos/")                       # doctest: +SKIP
        >>> index.search("a cat", top_k=3)[0].id                                   # doctest: +SKIP
        'cats/chelsea.png'
        >>> index.search(images="query.jpg", top_k=3)                              # doctest: +SKIP
        >>> index.search("the same, at night", images="query.jpg", top_k=3)        # doctest: +SKIP
    """

    def __init__(self, *args: Any, images: Sequence[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[Any] = list(images) if images is not None else [None] * len(self.ids)
        if len(self.images) != len(self.ids):
            raise ConfigError(
                f"the index has {len(self.images)} image references for {len(self.ids)} documents"
            )

    @classmethod
    def build(  # type: ignore[override]
        cls,
        embedder: Any,
        corpus: Any,
        *,
        chunk_size: int = 10_000,
        show_progress: bool | None = None,
        ann: AnnConfig | str | Mapping[str, Any] | None = None,
    ) -> MultimodalIndex:
        """Encode an image corpus (see :func:`image_corpus`) with ``embedder.encode_corpus`` and index it.

        Every image is checked before the first is encoded: a missing, corrupt or unsupported file fails
        the build at once with one error naming all of them.
        """
        ann = AnnConfig.parse(ann)
        ids, captions, images = image_corpus(corpus)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        if len(ids) > chunk_size:  # check every image before the first chunk, naming each one at fault
            embedder.prepare_items(captions, images, "passage")
        parts = []
        for begin in range(0, len(ids), chunk_size):
            end = begin + chunk_size
            out = embedder.encode_corpus(
                captions[begin:end], images=images[begin:end], show_progress=show_progress
            )
            parts.append(dense_array(out, len(ids[begin:end])))
        name = getattr(embedder, "name_or_path", None)
        info = {
            "model": os.path.abspath(name) if name and os.path.isdir(name) else name,
            "model_identity": model_identity(embedder),
            "embedder_class": "MultimodalEmbedder",
            "dtype": getattr(embedder, "dtype", None),
            "documents": len(ids),
            "images": sum(image is not None for image in images),
        }
        documents = [{"title": "", "text": caption or ""} for caption in captions]
        # in-memory images (PIL, arrays) have no reference to keep: the id names them
        refs = [image if isinstance(image, str) else None for image in images]
        return cls(embedder, ids, documents, np.concatenate(parts), None, info, ann=ann, images=refs)

    def add(self, corpus: Any, *, chunk_size: int = 10_000, show_progress: bool | None = None) -> None:
        """Encode more image-corpus items and append them (ids must be new)."""
        more = MultimodalIndex.build(
            self.embedder, corpus, chunk_size=chunk_size, show_progress=show_progress
        )
        clash = next((i for i in more.ids if i in set(self.ids)), None)
        if clash is not None:
            raise InputError(f"document id {clash!r} is already in the index; ids must be unique")
        assert self.dense is not None and more.dense is not None
        self._check_dim(more.dense)
        self.dense = np.concatenate([self.dense, more.dense])
        if not self.ann.exact:
            self._faiss.add(more.dense)
        else:
            self._faiss = None
        self.ids.extend(more.ids)
        self.documents.extend(more.documents)
        self.images.extend(more.images)
        self.info["documents"] = len(self.ids)

    def image(self, doc_id: str) -> Any:
        """The image reference (path) of the document ``doc_id``; ``None`` for a text document."""
        try:
            return self.images[self.ids.index(doc_id)]
        except ValueError:
            raise InputError(f"document id {doc_id!r} is not in the index") from None

    def search(  # type: ignore[override]
        self,
        queries: Any = None,
        top_k: int = 10,
        *,
        images: Any = None,
        mode: Mode | None = None,
        weights: Mapping[str, float] | None = None,
        reranker: Any = None,
        rerank_top_k: int = 100,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
    ) -> Any:
        """The ``top_k`` best documents of each query: texts (``queries``), ``images``, or both (composed:
        image ``i`` with text ``i``). One query gives a list of hits, several a list of lists.

        A text reranker applies to text queries only. Other arguments as :meth:`SearchIndex.search`.
        """
        if images is None:
            return super().search(
                queries,
                top_k,
                mode=mode,
                weights=weights,
                reranker=reranker,
                rerank_top_k=rerank_top_k,
                nprobe=nprobe,
                ef_search=ef_search,
                refine_factor=refine_factor,
            )
        if reranker is not None:
            raise ConfigError("a text reranker cannot rerank image queries; leave reranker out")
        knobs = self._knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
        checked_search_args(self.modes, mode, top_k, None, rerank_top_k, "index")
        encoded = self.embedder.encode_queries(queries, images=images)
        single = np.ndim(encoded) == 1
        vectors = dense_array(np.atleast_2d(encoded))
        positions, scores = self._dense_top(vectors, min(len(self.ids), top_k), **knobs)
        results = [
            [self._hit(p, s) for p, s in zip(row_p, row_s, strict=True)]
            for row_p, row_s in zip(positions, scores, strict=True)
        ]
        return results[0] if single else results

    def _write(self, staged: str, *, write_dense: bool) -> None:
        super()._write(staged, write_dense=write_dense)
        with open(os.path.join(staged, IMAGES_FILE), "w", encoding="utf-8") as handle:
            json.dump(self.images, handle)

    @classmethod
    def load(  # type: ignore[override]
        cls,
        folder: str,
        embedder: Any = None,
        *,
        check_model: bool = True,
        mmap: bool | None = None,
        **embedder_kwargs: Any,
    ) -> MultimodalIndex:
        """Open a saved index; ``embedder`` defaults to the ``MultimodalEmbedder`` that built it."""
        meta_path = os.path.join(folder, META_FILE)
        if embedder is None and os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as handle:
                model = json.load(handle).get("model")
            if not model:
                raise ConfigError(f"{meta_path} names no model: pass the embedder that built the index")
            from bgekit.multimodal.embedder import MultimodalEmbedder

            embedder = MultimodalEmbedder(model, **embedder_kwargs)
        index = super().load(folder, embedder, check_model=check_model, mmap=mmap)
        assert isinstance(index, MultimodalIndex)
        images_path = os.path.join(folder, IMAGES_FILE)
        if os.path.isfile(images_path):
            try:
                with open(images_path, encoding="utf-8") as handle:
                    refs = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"invalid JSON ({exc.msg})", images_path, exc.lineno) from exc
            if not isinstance(refs, list) or len(refs) != len(index.ids):
                raise DataFormatError(f"expected a list of {len(index.ids)} image references", images_path)
            index.images = refs
        return index
