"""Teacher scores for distillation: a reranker scores every (query, passage) of each training line.

Adds ``pos_scores`` and ``neg_scores`` (one float per passage, in order) to FlagEmbedding-style lines,
the fields ``--knowledge_distillation`` trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bgekit.errors import InputError
from bgekit.io import iter_jsonl, write_jsonl_atomic


class PairScorer(Protocol):
    """Anything with ``compute_score(pairs) -> list[float]``, e.g. ``bgekit.Reranker``."""

    def compute_score(self, sentence_pairs: Any, **kwargs: Any) -> Any: ...


def score_rows(
    scorer: PairScorer, rows: Sequence[dict[str, Any]], *, lines_per_call: int = 64
) -> list[dict[str, Any]]:
    """Return copies of ``rows`` with ``pos_scores`` and ``neg_scores`` from ``scorer``.

    Pairs of ``lines_per_call`` lines go to the scorer at once, so its batching engine sees long runs
    of pairs to sort and batch.

    Example:
        >>> class Length:
        ...     def compute_score(self, pairs): return [float(len(p)) for _, p in pairs]
        >>> score_rows(Length(), [{"query": "q", "pos": ["abc"], "neg": ["a"]}])[0]["neg_scores"]
        [1.0]
    """
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), lines_per_call):
        chunk = rows[start : start + lines_per_call]
        pairs = [(row["query"], passage) for row in chunk for passage in [*row["pos"], *row.get("neg", [])]]
        scores = scorer.compute_score(pairs) if pairs else []
        if isinstance(scores, (int, float)):
            scores = [scores]
        scores = [float(s) for s in scores]
        if len(scores) != len(pairs):
            raise InputError(f"the reranker returned {len(scores)} scores for {len(pairs)} pairs")
        offset = 0
        for row in chunk:
            n_pos, n_neg = len(row["pos"]), len(row.get("neg", []))
            new = dict(row)
            new["pos_scores"] = scores[offset : offset + n_pos]
            new["neg_scores"] = scores[offset + n_pos : offset + n_pos + n_neg]
            offset += n_pos + n_neg
            out.append(new)
    return out


def score_file(scorer: PairScorer, input_path: str, output_path: str, *, lines_per_call: int = 64) -> int:
    """Score a training JSONL into ``output_path`` (written atomically); returns the number of lines.

    Example:
        >>> score_file(bgekit.Reranker("BAAI/bge-reranker-base"), "train_hn.jsonl", "train_kd.jsonl")  # doctest: +SKIP
    """
    from bgekit.finetune.data import validate_row

    rows = [validate_row(row, input_path, line_no) for line_no, row in iter_jsonl(input_path)]
    scored = score_rows(scorer, rows, lines_per_call=lines_per_call)
    write_jsonl_atomic(output_path, scored)
    return len(scored)
