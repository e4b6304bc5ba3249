"""Retrieval metrics through pytrec_eval (as BEIR and MTEB compute them), MRR@k, and TREC run files.

Scores are named as MTEB names them: ``ndcg_at_10``, ``map_at_10``, ``recall_at_100``,
``precision_at_10``, ``mrr_at_10``. Graded relevance is kept (nDCG gain = the relevance grade, as
trec_eval computes it); a document counts as relevant for MAP, recall, precision and MRR when its
grade is at least 1. Ranking ties are broken by document id, higher id first: that is trec_eval's own
order and the order MTEB's top-k heap leaves, so every metric here sees the same ranking.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.io import iter_text_lines

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 100, 1000)
METRIC_FAMILIES = ("ndcg", "map", "recall", "precision", "mrr")
_TREC_NAMES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}


def _require_pytrec_eval() -> Any:
    try:
        import pytrec_eval
    except ImportError as exc:  # pragma: no cover - the eval extra is installed in CI
        raise ConfigError(
            "evaluation metrics need pytrec_eval: pip install 'bgekit[eval]' (or pytrec-eval-terrier)"
        ) from exc
    return pytrec_eval


def validate_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    """Sorted unique positive cutoffs; raises ConfigError on anything else."""
    values = []
    for k in k_values:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k_values must be positive integers, got {k!r}")
        values.append(k)
    if not values:
        raise ConfigError("k_values is empty; give at least one cutoff, e.g. [10]")
    return tuple(sorted(set(values)))


def metric_names(k_values: Iterable[int]) -> list[str]:
    """All metric names computed for these cutoffs, in report order."""
    ks = validate_k_values(k_values)
    return [f"{family}_at_{k}" for family in METRIC_FAMILIES for k in ks]


def ranked(doc_scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents by score, highest first; ties by document id, higher first (trec_eval's order).

    Example:
        >>> ranked({"a": 1.0, "b": 1.0, "c": 2.0})
        [('c', 2.0), ('b', 1.0), ('a', 1.0)]
    """
    # two stable sorts: id descending, then score descending, keeps ids descending within a tie
    by_id = sorted(doc_scores.items(), key=lambda item: item[0], reverse=True)
    return sorted(by_id, key=lambda item: item[1], reverse=True)


def truncate_run(run: Run, k: int) -> dict[str, dict[str, float]]:
    """The top ``k`` documents of each query (in ``ranked`` order)."""
    return {query_id: dict(ranked(docs)[:k]) for query_id, docs in run.items()}


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Reciprocal rank of the first relevant document within the top ``k``, per query (0 if none).

    Queries are those present in both ``qrels`` and ``run`` (pytrec_eval's convention).

    Example:
        >>> mrr_at_k({"q": {"d2": 1}}, {"q": {"d1": 0.9, "d2": 0.5}}, k=10)
        {'q': 0.5}
    """
    scores: dict[str, float] = {}
    for query_id, docs in run.items():
        if query_id not in qrels:
            continue
        relevant = {d for d, rel in qrels[query_id].items() if rel > 0}
        scores[query_id] = 0.0
        for rank, (doc_id, _) in enumerate(ranked(docs)[:k], start=1):
            if doc_id in relevant:
                scores[query_id] = 1.0 / rank
                break
    return scores


def _check_inputs(qrels: Qrels, run: Run) -> None:
    for query_id, docs in qrels.items():
        for doc_id, rel in docs.items():
            if isinstance(rel, bool) or not isinstance(rel, int):
                raise InputError(f"qrels[{query_id!r}][{doc_id!r}] = {rel!r}; relevance must be an integer")
    for query_id, scored in run.items():
        for doc_id, score in scored.items():
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise InputError(f"run[{query_id!r}][{doc_id!r}] = {score!r}; a score must be a number")


def compute_metrics(
    qrels: Qrels,
    run: Run,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    *,
    per_query: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, float]] | None]:
    """nDCG, MAP, recall and precision at each k (pytrec_eval) and MRR at each k.

    Means are over the queries present in both ``qrels`` and ``run``, as pytrec_eval, BEIR and MTEB
    average them.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}`` (integers; graded relevance kept).
        run: ``{query_id: {doc_id: score}}``.
        k_values: cutoffs.
        per_query: also return ``{query_id: {metric: value}}``.

    Returns:
        ``(means, per_query_scores or None)``.

    Example:
        >>> means, _ = compute_metrics({"q": {"d1": 2, "d2": 1}}, {"q": {"d1": 0.9, "d3": 0.5}}, [1, 10])
        >>> means["ndcg_at_1"], means["recall_at_10"]
        (1.0, 0.5)
    """
    pytrec_eval = _require_pytrec_eval()
    ks = validate_k_values(k_values)
    _check_inputs(qrels, run)
    joined = ",".join(str(k) for k in ks)
    measures = {f"{trec}.{joined}" for trec in _TREC_NAMES.values()}
    trec_qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    trec_run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if docs}
    evaluator = pytrec_eval.RelevanceEvaluator(trec_qrels, measures)
    raw = evaluator.evaluate(trec_run)
    rows: dict[str, dict[str, float]] = {}
    for query_id, values in raw.items():
        row: dict[str, float] = {}
        for family, trec in _TREC_NAMES.items():
            for k in ks:
                row[f"{family}_at_{k}"] = float(values[f"{trec}_{k}"])
        rows[query_id] = row
    for k in ks:
        for query_id, value in mrr_at_k(trec_qrels, trec_run, k).items():
            if query_id in rows:
                rows[query_id][f"mrr_at_{k}"] = value
    names = metric_names(ks)
    count = len(rows)
    means = {name: (sum(r[name] for r in rows.values()) / count if count else 0.0) for name in names}
    return means, (rows if per_query else None)


def write_trec_run(path: str, run: Run, tag: str = "bgekit") -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), ranks from 1 in ``ranked`` order.

    Example:
        >>> write_trec_run("run.trec", {"q1": {"d1": 0.9}})   # doctest: +SKIP
    """
    from bgekit.io import atomic_open

    if any(ch.isspace() for ch in tag) or not tag:
        raise InputError(f"run tag {tag!r} must be a non-empty word without spaces")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for query_id in run:
            for rank, (doc_id, score) in enumerate(ranked(run[query_id]), start=1):
                if any(ch.isspace() for ch in query_id + doc_id) or not query_id or not doc_id:
                    raise InputError(
                        f"query id {query_id!r} / document id {doc_id!r} contains whitespace or is empty; "
                        "a TREC run file cannot hold it"
                    )
                handle.write(f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")


def read_trec_run(path: str) -> dict[str, dict[str, float]]:
    """Read a TREC run file back into ``{query_id: {doc_id: score}}``."""
    if not os.path.isfile(path):
        raise DataFormatError("run file not found", path)
    run: dict[str, dict[str, float]] = {}
    for line_no, line in iter_text_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise DataFormatError(
                f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}", path, line_no
            )
        try:
            score = float(parts[4])
        except ValueError:
            raise DataFormatError(f"score {parts[4]!r} is not a number", path, line_no) from None
        run.setdefault(parts[0], {})[parts[2]] = score
    return run
