"""The evaluation cache: corpus embeddings and search results, keyed by everything that changes them.

Layout under the output folder::

    cache/<embedder fingerprint>/<dataset name>-<corpus hash>/
        meta.json                        what the key stands for (readable; not used for lookup)
        corpus-c<chunk size>-<n>.npy     float32 embeddings of chunk n
        search-<hash>.json               {query_id: {doc_id: score}}
        rerank-<hash>.json               reranker scores

The embedder fingerprint (``Embedder.fingerprint()``) hashes the model files and every setting that
changes an embedding (pooling, instructions, max lengths, dtype, truncate_dim, ...), so a changed
instruction or a retrained model lands in a new folder: nothing keys on the folder's basename as
FlagEmbedding does. The corpus hash covers document ids and texts; search results are further keyed
by the queries' hash and the search settings. Every file is written atomically, so an interrupted run
leaves whole chunks that the next run reuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any

import numpy as np

from bgekit.evaluation.datasets import RetrievalDataset
from bgekit.io import atomic_open, save_npy_atomic


def settings_hash(settings: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "dataset"


class EvalCache:
    """Cached artefacts of one (embedder, corpus) pair.

    Args:
        root: the cache root (``<output_dir>/cache``).
        embedder_key: the embedder's fingerprint.
        dataset: the dataset (its corpus and queries are hashed).
        chunk_size: corpus chunk size (chunks are stored per size).
        overwrite: delete what is cached for this pair first.

    Example:
        >>> cache = EvalCache("results/cache", model.fingerprint(), dataset, 50_000)   # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        embedder_key: str,
        dataset: RetrievalDataset,
        chunk_size: int,
        *,
        overwrite: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.chunk_size = chunk_size
        self.folder = os.path.join(
            root, _safe(embedder_key), f"{_safe(dataset.name)}-{dataset.corpus_fingerprint()}"
        )
        if overwrite and os.path.isdir(self.folder):
            shutil.rmtree(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        meta_path = os.path.join(self.folder, "meta.json")
        if meta is not None and not os.path.exists(meta_path):
            with atomic_open(meta_path, "w", encoding="utf-8") as handle:
                json.dump(
                    {"embedder": embedder_key, "dataset": dataset.name, **meta}, handle, indent=2, default=str
                )

    # ------------------------------------------------------------------------------------ corpus
    def _chunk_path(self, number: int) -> str:
        return os.path.join(self.folder, f"corpus-c{self.chunk_size}-{number:05d}.npy")

    def load_corpus_chunk(self, number: int, expected_rows: int) -> np.ndarray | None:
        """The cached embeddings of chunk ``number``, or None (absent or of the wrong shape)."""
        path = self._chunk_path(number)
        if not os.path.isfile(path):
            return None
        try:
            vectors = np.load(path)
        except (OSError, ValueError):
            return None
        if vectors.ndim != 2 or vectors.shape[0] != expected_rows or vectors.dtype != np.float32:
            return None
        return np.ascontiguousarray(vectors)

    def save_corpus_chunk(self, number: int, vectors: np.ndarray) -> None:
        save_npy_atomic(self._chunk_path(number), vectors)

    # ------------------------------------------------------------------------------ results
    def _json_path(self, kind: str, settings: dict[str, Any]) -> str:
        key = settings_hash(
            {**settings, "queries": self.dataset.queries_fingerprint(), "split": self.dataset.split}
        )
        return os.path.join(self.folder, f"{kind}-{key}.json")

    def _load_json(self, kind: str, settings: dict[str, Any]) -> dict[str, dict[str, float]] | None:
        path = self._json_path(kind, settings)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                stored = json.load(handle)
        except (OSError, ValueError):
            return None
        results = stored.get("results") if isinstance(stored, dict) else None
        if not isinstance(results, dict) or set(results) != set(self.dataset.queries):
            return None
        return {q: {d: float(s) for d, s in docs.items()} for q, docs in results.items()}

    def _save_json(self, kind: str, settings: dict[str, Any], results: dict[str, dict[str, float]]) -> None:
        with atomic_open(self._json_path(kind, settings), "w", encoding="utf-8") as handle:
            json.dump({"settings": settings, "results": results}, handle)

    def load_search(self, settings: dict[str, Any]) -> dict[str, dict[str, float]] | None:
        """Cached search results for these search settings, or None."""
        return self._load_json("search", settings)

    def save_search(self, settings: dict[str, Any], results: dict[str, dict[str, float]]) -> None:
        self._save_json("search", settings, results)

    def load_rerank(self, settings: dict[str, Any]) -> dict[str, dict[str, float]] | None:
        """Cached reranked results (keyed by the reranker's fingerprint and settings), or None."""
        return self._load_json("rerank", settings)

    def save_rerank(self, settings: dict[str, Any], results: dict[str, dict[str, float]]) -> None:
        self._save_json("rerank", settings, results)
