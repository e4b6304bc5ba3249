"""Output quantisation of embeddings (int8/uint8 scalar, binary) and rescored search over them.

The conventions are sentence-transformers' (``quantize_embeddings`` and ``semantic_search_faiss``), so an
index built with one can be searched with the other: int8 buckets are 256 equal steps between the per-
dimension minimum and maximum of calibration embeddings (``ranges``, shape (2, dim)); binary packs the sign
bits (``binary`` shifted by -128 into int8, ``ubinary`` as uint8). Search scores the quantised query against
the quantised corpus, takes ``top_k * rescore_multiplier`` candidates, then rescores them with the float32
query against the quantised corpus vectors.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from bgekit.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def compute_ranges(calibration_embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension (min, max) of calibration embeddings, shape (2, dim): the int8 bucket ranges."""
    calibration = np.asarray(calibration_embeddings, dtype=np.float32)
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0)))


def quantize_embeddings(
    embeddings: Any,
    precision: Precision,
    *,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Quantise float embeddings to ``precision`` (sentence-transformers' conventions, same numbers).

    Args:
        embeddings: float array (n, dim) (a torch tensor is accepted).
        precision: ``float32``, ``int8``, ``uint8``, ``binary`` or ``ubinary``.
        ranges: int8/uint8 bucket ranges (2, dim); default from ``calibration_embeddings``, else from
            ``embeddings`` themselves (unstable for small inputs: a warning says so).

    Example:
        >>> quantize_embeddings(np.array([[0.5, -0.2, 0.1, -0.9, 0.3, 0.2, -0.1, 0.4]]), "ubinary").tolist()
        [[173]]
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not valid; choose one of {list(PRECISIONS)}")
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array (n, dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"embeddings to quantise must be float, got {array.dtype}")
    if precision == "float32":
        return array.astype(np.float32)
    if precision in ("int8", "uint8"):
        if ranges is None:
            if calibration_embeddings is None and len(array) < 100:
                logger.warning(
                    "computing %s buckets from only %d embeddings; pass ranges= or calibration_embeddings=",
                    precision,
                    len(array),
                )
            ranges = compute_ranges(array if calibration_embeddings is None else calibration_embeddings)
        ranges = np.asarray(ranges)
        if ranges.shape != (2, array.shape[1]):
            raise InputError(f"ranges must have shape (2, {array.shape[1]}), got {ranges.shape}")
        starts = ranges[0, :]
        steps = (ranges[1, :] - ranges[0, :]) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((array - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(array > 0, axis=-1).reshape(array.shape[0], -1)
    return (packed - 128).astype(np.int8) if precision == "binary" else packed


def search_quantized(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    precision: Precision,
    top_k: int = 10,
    *,
    ranges: np.ndarray | None = None,
    rescore: bool = True,
    rescore_multiplier: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of float32 queries over a quantised corpus, with sentence-transformers' rescoring.

    Args:
        query_embeddings: float32 (q, dim) queries (quantised here with the same ``ranges``).
        corpus_embeddings: the corpus as returned by ``quantize_embeddings(..., precision)``.
        precision: the corpus precision.
        top_k: results per query.
        ranges: the int8/uint8 ranges the corpus was quantised with.
        rescore: rescore ``top_k * rescore_multiplier`` candidates with the float query.

    Returns:
        ``(scores, indices)``, each (q, top_k), best first.

    Example:
        >>> corpus = quantize_embeddings(doc_vecs, "ubinary")                      # doctest: +SKIP
        >>> scores, ids = search_quantized(query_vecs, corpus, "ubinary", top_k=10)  # doctest: +SKIP
    """
    queries = np.asarray(query_embeddings, dtype=np.float32)
    corpus = np.asarray(corpus_embeddings)
    n = corpus.shape[0]
    k = min(top_k * (rescore_multiplier if rescore and precision != "float32" else 1), n)
    if precision in ("binary", "ubinary"):
        bits = corpus.astype(np.int16) + 128 if precision == "binary" else corpus
        corpus_bits = np.unpackbits(bits.astype(np.uint8), axis=-1).astype(np.float32)
        query_bits = np.unpackbits(quantize_embeddings(queries, "ubinary"), axis=-1).astype(np.float32)
        # Hamming distance = |q| + |d| - 2 q.d on bit vectors; the smaller, the better
        hamming = (
            query_bits.sum(1, keepdims=True) + corpus_bits.sum(1)[None, :] - 2 * query_bits @ corpus_bits.T
        )
        first = -hamming
        rescore_corpus = corpus_bits
    else:
        quantized_queries = (
            quantize_embeddings(queries, precision, ranges=ranges) if precision != "float32" else queries
        )
        rescore_corpus = corpus.astype(np.float32)
        first = quantized_queries.astype(np.float32) @ rescore_corpus.T
    candidates = np.argsort(-first, axis=1, kind="stable")[:, :k]
    if rescore and precision != "float32":
        rescored = np.einsum("ij,ikj->ik", queries, rescore_corpus[candidates])
        order = np.argsort(-rescored, axis=1, kind="stable")[:, :top_k]
        rows = np.arange(len(queries))[:, None]
        return rescored[rows, order], candidates[rows, order]
    rows = np.arange(len(queries))[:, None]
    top = candidates[:, :top_k]
    return first[rows, top], top
