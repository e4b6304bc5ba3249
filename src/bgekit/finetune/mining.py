"""Hard-negative mining: replace each training line's negatives with passages the model ranks high.

FlagEmbedding's ``hn_mine`` rule (search the candidate corpus, sample ``negatives`` passages at random
from the rank window ``range``, positives excluded), plus the margins of NV-Retriever and
sentence-transformers' ``mine_hard_negatives`` (drop candidates scoring too close to the positive,
which are often unlabelled positives) and an optional reranker filter for false negatives.

Memory stays bounded on a large corpus: the corpus is encoded in chunks straight into an exact faiss
index (chunks cached on disk, keyed by the model's fingerprint and the chunk's texts), queries are
searched in batches, and no full score matrix is ever built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bgekit.errors import ConfigError, DataFormatError
from bgekit.inference.arrays import dense_array
from bgekit.inference.inputs import corpus_item_text
from bgekit.io import iter_jsonl, save_npy_atomic, write_jsonl_atomic
from bgekit.optional import require_faiss

logger = logging.getLogger(__name__)


@dataclass
class MiningOptions:
    """How negatives are chosen.

    Attributes:
        range_start / range_end: the rank window (0-based, end excluded) candidates are sampled from,
            FlagEmbedding's ``range_for_sampling="10-210"``.
        negatives: negatives kept per line (FlagEmbedding's ``negative_number``).
        relative_margin: drop candidates with ``score > (1 - relative_margin) * positive_score``.
        absolute_margin: drop candidates with ``score > positive_score - absolute_margin``.
        max_reranker_score: with a reranker, drop candidates it scores above this (likely positives).
        seed: the random sampling seed.
        query_batch_size: queries searched per faiss call.
        corpus_chunk_size: passages encoded per chunk.

    Example:
        >>> MiningOptions.from_range("10-210", negatives=15).range_end
        210
    """

    range_start: int = 10
    range_end: int = 210
    negatives: int = 15
    relative_margin: float | None = None
    absolute_margin: float | None = None
    max_reranker_score: float | None = None
    seed: int = 42
    query_batch_size: int = 256
    corpus_chunk_size: int = 50_000

    def __post_init__(self) -> None:
        if not 0 <= self.range_start < self.range_end:
            raise ConfigError(
                f"range {self.range_start}-{self.range_end} is not valid; expected 0 <= start < end"
            )
        if self.negatives < 1:
            raise ConfigError(f"negatives={self.negatives} must be at least 1")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ConfigError(f"relative_margin={self.relative_margin} must be in [0, 1)")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ConfigError(f"absolute_margin={self.absolute_margin} must be >= 0")
        if self.corpus_chunk_size < 1 or self.query_batch_size < 1:
            raise ConfigError("corpus_chunk_size and query_batch_size must be positive")

    @classmethod
    def from_range(cls, spec: str, **kwargs: Any) -> MiningOptions:
        """Build from a ``"START-END"`` rank window, as FlagEmbedding's ``--range_for_sampling``."""
        parts = spec.split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"range {spec!r} is not valid; expected START-END, e.g. 10-210")
        return cls(range_start=int(parts[0]), range_end=int(parts[1]), **kwargs)


def read_candidates(path: str) -> list[str]:
    """Candidate passages: JSONL of strings or objects with ``text`` (and optional ``title``).

    Titles are joined as BEIR does (``"title text"``), the form training positives must use to be
    recognised and excluded.
    """
    texts: list[str] = []
    for line_no, row in iter_jsonl(path):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            title = row.get("title")
            if title is not None and not isinstance(title, str):
                raise DataFormatError("field 'title' must be a string", path, line_no)
            texts.append(corpus_item_text({"title": title or "", "text": row["text"]}, line_no))
        else:
            raise DataFormatError(
                "expected a JSON string or an object with a string 'text' field", path, line_no
            )
    if not texts:
        raise DataFormatError("no candidate passages", path)
    return texts


def read_training_rows(path: str) -> list[dict[str, Any]]:
    """Training lines to mine for: each needs a string ``query`` and a non-empty list ``pos``."""
    from bgekit.finetune.data import validate_row

    return [validate_row(row, path, line_no) for line_no, row in iter_jsonl(path)]


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def build_index(
    embedder: Any,
    texts: Sequence[str],
    *,
    chunk_size: int = 50_000,
    cache_dir: str | None = None,
) -> Any:
    """An exact inner-product faiss index of the passages, encoded chunk by chunk (cached if asked).

    Example:
        >>> index = build_index(Embedder("BAAI/bge-small-en-v1.5"), ["a", "b"])   # doctest: +SKIP
    """
    faiss = require_faiss("hard-negative mining")
    prefix = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        fingerprint = embedder.fingerprint() if hasattr(embedder, "fingerprint") else None
        prefix = os.path.join(cache_dir, f"corpus-{fingerprint}") if fingerprint else None
    index: Any = None
    for start in range(0, len(texts), chunk_size):
        chunk = list(texts[start : start + chunk_size])
        path = f"{prefix}-{start}-{_texts_digest(chunk)}.npy" if prefix else None
        if path and os.path.isfile(path):
            vectors = np.load(path)
        else:
            vectors = dense_array(embedder.encode_corpus(chunk), len(chunk))
            if path:
                save_npy_atomic(path, vectors)
        if index is None:
            index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        del vectors
    return index


def select_negatives(
    ranked: Sequence[tuple[int, float]],
    positives: set[str],
    query: str,
    texts: Sequence[str],
    positive_score: float | None,
    options: MiningOptions,
    rng: random.Random,
    reranker_filter: Callable[[str, list[str]], list[bool]] | None = None,
) -> list[str]:
    """Pick negatives for one query from its ranked candidates ``[(passage index, score), ...]``.

    Candidates in the rank window that are not a positive, not the query, and not within the margin of
    ``positive_score`` are shuffled; then, if a reranker filter is given, candidates it flags are
    dropped; the first ``options.negatives`` remain (fewer when the window runs short: training then
    samples negatives with repetition).

    Example:
        >>> opts = MiningOptions(range_start=0, range_end=3, negatives=1, absolute_margin=0.1)
        >>> select_negatives([(0, 0.95), (1, 0.5)], {"p"}, "q", ["x", "y"], 1.0, opts, random.Random(0))
        ['y']
    """
    window = ranked[options.range_start : options.range_end]
    threshold = None
    if positive_score is not None:
        limits = []
        if options.relative_margin is not None:
            limits.append(positive_score * (1 - options.relative_margin))
        if options.absolute_margin is not None:
            limits.append(positive_score - options.absolute_margin)
        threshold = min(limits) if limits else None
    seen: set[str] = set()
    pool: list[str] = []
    for idx, score in window:
        text = texts[idx]
        if text in positives or text == query or text in seen:
            continue
        if threshold is not None and score > threshold:
            continue
        seen.add(text)
        pool.append(text)
    rng.shuffle(pool)
    if reranker_filter is not None and pool:
        keep: list[str] = []
        step = max(options.negatives * 2, 8)
        for start in range(0, len(pool), step):
            batch = pool[start : start + step]
            keep.extend(t for t, ok in zip(batch, reranker_filter(query, batch), strict=True) if ok)
            if len(keep) >= options.negatives:
                break
        pool = keep
    return pool[: options.negatives]


def mine_hard_negatives(
    embedder: Any,
    rows: list[dict[str, Any]],
    candidates: Sequence[str] | None = None,
    options: MiningOptions | None = None,
    *,
    reranker: Any = None,
    cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Return the rows with ``neg`` replaced by mined hard negatives.

    Args:
        embedder: a ``bgekit.Embedder`` (or any object with ``encode_queries``/``encode_corpus``); its
            query/passage instructions apply.
        rows: training lines (``query``, ``pos``; ``neg`` is replaced; stale ``neg_scores`` dropped).
        candidates: the passages to mine from; ``None``: every ``pos`` and ``neg`` of the rows.
        options: :class:`MiningOptions`.
        reranker: optional object with ``compute_score(pairs)``; with ``options.max_reranker_score``,
            candidates it scores above that are treated as false negatives and skipped.
        cache_dir: cache corpus embeddings here.

    Example:
        >>> mined = mine_hard_negatives(Embedder(path), rows, corpus, MiningOptions(negatives=15))  # doctest: +SKIP
    """
    options = options or MiningOptions()
    if candidates is None:
        pool = {t: None for row in rows for t in [*row["pos"], *row.get("neg", [])]}
        candidates = list(pool)
    texts = list(candidates)
    index = build_index(embedder, texts, chunk_size=options.corpus_chunk_size, cache_dir=cache_dir)
    fetch = min(len(texts), options.range_end)
    reranker_filter = None
    if reranker is not None and options.max_reranker_score is not None:
        limit = options.max_reranker_score

        def reranker_filter(query: str, passages: list[str]) -> list[bool]:
            scores = reranker.compute_score([(query, p) for p in passages])
            return [float(s) <= limit for s in scores]

    rng = random.Random(options.seed)
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), options.query_batch_size):
        batch = rows[start : start + options.query_batch_size]
        q_vecs = dense_array(embedder.encode_queries([r["query"] for r in batch]), len(batch))
        scores, positions = index.search(q_vecs, fetch)
        pos_scores: list[float | None] = [None] * len(batch)
        if options.relative_margin is not None or options.absolute_margin is not None:
            # the least similar positive sets the margin, so no positive-like candidate survives
            for i, row in enumerate(batch):
                p_vecs = dense_array(embedder.encode_corpus(list(row["pos"])))
                pos_scores[i] = float((p_vecs @ q_vecs[i]).min())
        for i, row in enumerate(batch):
            ranked = [(int(p), float(s)) for s, p in zip(scores[i], positions[i], strict=True) if p >= 0]
            negatives = select_negatives(
                ranked, set(row["pos"]), row["query"], texts, pos_scores[i], options, rng, reranker_filter
            )
            if len(negatives) < options.negatives:
                logger.debug("query %r: only %d negatives found", row["query"][:60], len(negatives))
            new = {k: v for k, v in row.items() if k not in ("neg", "neg_scores", "pos_scores")}
            new["neg"] = negatives
            out.append(new)
    short = sum(len(r["neg"]) < options.negatives for r in out)
    if short:
        logger.warning("%d of %d queries got fewer than %d negatives", short, len(out), options.negatives)
    return out


def mine_file(
    embedder: Any,
    input_path: str,
    output_path: str,
    *,
    corpus_path: str | None = None,
    options: MiningOptions | None = None,
    reranker: Any = None,
    cache_dir: str | None = None,
) -> int:
    """Mine a JSONL training file into ``output_path`` (written atomically); returns the line count."""
    rows = read_training_rows(input_path)
    candidates = read_candidates(corpus_path) if corpus_path else None
    mined = mine_hard_negatives(embedder, rows, candidates, options, reranker=reranker, cache_dir=cache_dir)
    write_jsonl_atomic(output_path, mined)
    return len(mined)
