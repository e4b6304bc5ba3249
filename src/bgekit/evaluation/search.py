"""Dense retrieval for evaluation: corpus encoded in chunks into an exact faiss inner-product index.

The corpus is embedded once, chunk by chunk: each chunk's float32 vectors go into the index (and the
cache, when one is given) and are dropped, so no more than one chunk of activations is held beyond
the index. Search is exact (``IndexFlatIP``); with normalised embeddings that is cosine similarity,
as MTEB and BEIR search. Ties are broken by document id as MTEB's top-k heap breaks them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from bgekit.errors import ConfigError, InputError
from bgekit.evaluation.cache import EvalCache
from bgekit.evaluation.datasets import RetrievalDataset
from bgekit.evaluation.metrics import ranked
from bgekit.inference.arrays import dense_array
from bgekit.inference.inputs import corpus_item_text
from bgekit.optional import require_faiss

logger = logging.getLogger(__name__)

DEFAULT_CORPUS_CHUNK_SIZE = 50_000
"""Documents encoded (and held as float32) at once; MTEB's exact search uses the same chunk size."""

_TIE_MARGIN = 16
"""Extra hits fetched past k so that ties at the cut-off are settled by document id, not index order."""


class EncoderLike(Protocol):
    """What search needs from an embedder (``bgekit.Embedder`` satisfies it)."""

    def encode_queries(self, queries: list[str], **kwargs: Any) -> np.ndarray: ...

    def encode_corpus(self, corpus: list[Any], **kwargs: Any) -> np.ndarray: ...


class RerankerLike(Protocol):
    """What the rerank stage needs: one relevance score per ``(query, passage)`` pair.

    ``bgekit.Reranker`` satisfies it; so does any object with this method, for example a wrapper
    around another library's cross-encoder.
    """

    def compute_score(self, pairs: list[tuple[str, str]]) -> Sequence[float]: ...


def _progress(total: int, desc: str, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not show if show is not None else total < 2, unit="it")


def encode_corpus_into_index(
    embedder: EncoderLike,
    dataset: RetrievalDataset,
    *,
    chunk_size: int = DEFAULT_CORPUS_CHUNK_SIZE,
    cache: EvalCache | None = None,
    show_progress: bool | None = None,
    log: Callable[[str], None] = logger.info,
) -> tuple[Any, list[str], dict[str, Any]]:
    """Build an exact inner-product faiss index over the corpus, chunk by chunk (cached per chunk).

    Returns:
        ``(index, doc_ids, info)``; ``info`` has ``encode_seconds``, ``chunks_encoded``, ``chunks_cached``.
    """
    faiss = require_faiss()
    if chunk_size < 1:
        raise ConfigError(f"corpus_chunk_size must be >= 1, got {chunk_size}")
    doc_ids = list(dataset.corpus)
    index: Any = None
    encoded = cached = 0
    start = time.perf_counter()
    chunks = range(0, len(doc_ids), chunk_size)
    with _progress(len(doc_ids), "Encoding corpus", show_progress) as bar:
        for number, begin in enumerate(chunks):
            ids = doc_ids[begin : begin + chunk_size]
            vectors = cache.load_corpus_chunk(number, len(ids)) if cache is not None else None
            if vectors is None:
                items = [dataset.corpus[d] for d in ids]
                vectors = dense_array(embedder.encode_corpus(items), len(ids))
                if cache is not None:
                    cache.save_corpus_chunk(number, vectors)
                encoded += 1
            else:
                cached += 1
            if index is None:
                index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            del vectors
            bar.update(len(ids))
    seconds = time.perf_counter() - start
    log(
        f"{dataset.name}: corpus of {len(doc_ids)} documents: {encoded} chunk(s) encoded, "
        f"{cached} read from cache, in {seconds:.1f}s"
    )
    return index, doc_ids, {"encode_seconds": seconds, "chunks_encoded": encoded, "chunks_cached": cached}


def search_index(
    index: Any,
    doc_ids: Sequence[str],
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    top_k: int,
    *,
    ignore_identical_ids: bool = False,
    query_batch_size: int = 1024,
    show_progress: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Exact top-``top_k`` search of each query; returns ``{query_id: {doc_id: score}}``.

    ``ignore_identical_ids`` drops a document whose id equals the query's (BEIR's option, needed for
    ArguAna and Quora, where a query also appears in the corpus).
    """
    if top_k < 1:
        raise ConfigError(f"search_top_k must be >= 1, got {top_k}")
    fetch = min(len(doc_ids), top_k + _TIE_MARGIN + (1 if ignore_identical_ids else 0))
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    results: dict[str, dict[str, float]] = {}
    with _progress(len(query_ids), "Searching", show_progress) as bar:
        for begin in range(0, len(query_ids), query_batch_size):
            scores, positions = index.search(queries[begin : begin + query_batch_size], fetch)
            for row, query_id in enumerate(query_ids[begin : begin + query_batch_size]):
                hits = {
                    doc_ids[p]: float(s)
                    for s, p in zip(scores[row], positions[row], strict=True)
                    if p >= 0 and not (ignore_identical_ids and doc_ids[p] == query_id)
                }
                results[query_id] = dict(ranked(hits)[:top_k])
            bar.update(len(scores))
    return results


def dense_search(
    embedder: EncoderLike,
    dataset: RetrievalDataset,
    top_k: int = 1000,
    *,
    ignore_identical_ids: bool = False,
    chunk_size: int = DEFAULT_CORPUS_CHUNK_SIZE,
    cache: EvalCache | None = None,
    show_progress: bool | None = None,
    log: Callable[[str], None] = logger.info,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Embed the corpus (or read it from the cache), embed the queries, search; cached as a whole too.

    Returns:
        ``(results, info)``; ``info`` records timings and what came from the cache.

    Example:
        >>> results, info = dense_search(Embedder(path), load_dataset(folder), top_k=100)  # doctest: +SKIP
    """
    search_settings = {"top_k": top_k, "ignore_identical_ids": ignore_identical_ids}
    if cache is not None:
        stored = cache.load_search(search_settings)
        if stored is not None:
            log(f"{dataset.name}: search results read from cache {cache.folder}; encoding skipped")
            return stored, {"encode_seconds": 0.0, "search_seconds": 0.0, "search_cached": True}
    index, doc_ids, info = encode_corpus_into_index(
        embedder, dataset, chunk_size=chunk_size, cache=cache, show_progress=show_progress, log=log
    )
    start = time.perf_counter()
    query_ids = list(dataset.queries)
    query_vectors = dense_array(
        embedder.encode_queries([dataset.queries[q] for q in query_ids]), len(query_ids)
    )
    results = search_index(
        index,
        doc_ids,
        query_ids,
        query_vectors,
        top_k,
        ignore_identical_ids=ignore_identical_ids,
        show_progress=show_progress,
    )
    info["search_seconds"] = time.perf_counter() - start
    info["search_cached"] = False
    if cache is not None:
        cache.save_search(search_settings, results)
    return results, info


def rerank(
    reranker: RerankerLike,
    dataset: RetrievalDataset,
    results: dict[str, dict[str, float]],
    top_k: int,
) -> dict[str, dict[str, float]]:
    """Score each query's top ``top_k`` retrieved documents with ``reranker``; drop the rest.

    As FlagEmbedding's evaluator does, the reranked list holds only the ``top_k`` reranked documents,
    so metrics at cut-offs above ``top_k`` describe that shorter list.

    Example:
        >>> class Overlap:
        ...     def compute_score(self, pairs):
        ...         return [len(set(q.split()) & set(p.split())) for q, p in pairs]
        >>> rerank(Overlap(), dataset, results, top_k=100)   # doctest: +SKIP
    """
    if top_k < 1:
        raise ConfigError(f"rerank_top_k must be >= 1, got {top_k}")
    keys: list[tuple[str, str]] = []
    pairs: list[tuple[str, str]] = []
    for query_id, docs in results.items():
        for doc_id, _ in ranked(docs)[:top_k]:
            keys.append((query_id, doc_id))
            pairs.append((dataset.queries[query_id], corpus_item_text(dataset.corpus[doc_id], len(pairs))))
    scores = list(reranker.compute_score(pairs)) if pairs else []
    if len(scores) != len(pairs):
        raise InputError(f"the reranker returned {len(scores)} scores for {len(pairs)} pairs")
    reranked: dict[str, dict[str, float]] = {query_id: {} for query_id in results}
    for (query_id, doc_id), score in zip(keys, scores, strict=True):
        reranked[query_id][doc_id] = float(score)
    return reranked


def fuse_scores(
    retrieved: dict[str, dict[str, float]], reranked: dict[str, dict[str, float]], weight: float
) -> dict[str, dict[str, float]]:
    """``weight * z(reranker score) + (1 - weight) * z(retrieval score)`` over each query's reranked documents.

    ``z`` standardises within the query (mean 0, standard deviation 1), so the two stages' scales do not
    matter. Keeps the first stage's signal when the reranker alone would lose it (a small fine-tuned
    cross-encoder, say); ``weight=1`` ranks as the reranker alone. Only the reranked documents are kept.

    Example:
        >>> fused = fuse_scores({"q": {"a": 0.9, "b": 0.1}}, {"q": {"a": -1.0, "b": 1.0}}, 0.25)
        >>> max(fused["q"], key=fused["q"].get)
        'a'
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"rerank fusion weight must be in [0, 1], got {weight}")
    fused: dict[str, dict[str, float]] = {}
    for query_id, docs in reranked.items():
        ids = list(docs)
        if not ids:
            fused[query_id] = {}
            continue
        first = retrieved.get(query_id, {})
        missing = [d for d in ids if d not in first]
        if missing:
            raise InputError(f"query {query_id!r}: reranked document {missing[0]!r} has no retrieval score")
        second = np.array([docs[d] for d in ids], dtype=np.float64)
        dense = np.array([first[d] for d in ids], dtype=np.float64)
        mixed = weight * _standardised(second) + (1.0 - weight) * _standardised(dense)
        fused[query_id] = dict(zip(ids, mixed.tolist(), strict=True))
    return fused


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)
