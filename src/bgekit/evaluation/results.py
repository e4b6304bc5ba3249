"""Evaluation results: the scores of one stage (``StageResult``), of one ``evaluate`` call
(``EvaluationResult``), and their Markdown table.

Kept apart from ``evaluate`` (which produces them) and ``reports`` (which writes them to files), so both
import this module and neither imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Stage = Literal["retrieval", "rerank"]
DEFAULT_MAIN_SCORE = "ndcg_at_10"


@dataclass
class StageResult:
    """Scores of one model on one dataset after one stage (dense retrieval, or reranking).

    Attributes:
        model / dataset / split / stage: what was evaluated.
        scores: every metric (``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10``, ...), means over queries.
        main_score_name: the metric reports put first.
        per_query: ``{query_id: {metric: value}}`` when asked for.
        num_queries / num_documents: sizes of the evaluated split.
        seconds: timings (``encode``, ``search``, ``rerank``, ``metrics``).
        from_cache: whether this stage's results came from the cache.
        run_file: the TREC run file written, if any.
    """

    model: str
    dataset: str
    split: str
    stage: Stage
    scores: dict[str, float]
    main_score_name: str = DEFAULT_MAIN_SCORE
    per_query: dict[str, dict[str, float]] | None = None
    num_queries: int = 0
    num_documents: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    run_file: str | None = None

    @property
    def main_score(self) -> float:
        """The value of ``main_score_name``."""
        return self.scores[self.main_score_name]

    def to_dict(self, include_per_query: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["main_score"] = self.main_score
        if not include_per_query:
            data.pop("per_query")
        return data


@dataclass
class EvaluationResult:
    """All stage results of one ``evaluate`` call, the exact configuration, and the files written.

    Example:
        >>> result = bgekit.evaluate(model_path, "../shared/data/scifact")   # doctest: +SKIP
        >>> result.get("scifact").scores["ndcg_at_10"]                 # doctest: +SKIP
        0.6451...
    """

    results: list[StageResult]
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def get(self, dataset: str, stage: Stage | None = None, model: str | None = None) -> StageResult:
        """The result for ``dataset`` (default stage: rerank when reranking ran, else retrieval)."""
        matches = [r for r in self.results if r.dataset == dataset and (model is None or r.model == model)]
        if stage is not None:
            matches = [r for r in matches if r.stage == stage]
        if not matches:
            known = sorted({(r.model, r.dataset, r.stage) for r in self.results})
            raise KeyError(f"no result for dataset={dataset!r} stage={stage!r} model={model!r}; have {known}")
        return matches[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "results": [r.to_dict() for r in self.results], "files": self.files}

    def to_markdown(self, metrics: Sequence[str] | None = None) -> str:
        return markdown_table(self.results, metrics)


DEFAULT_TABLE_METRICS = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_10")


def _table_metrics(results: Sequence[StageResult], metrics: Sequence[str] | None) -> list[str]:
    available = set.intersection(*(set(r.scores) for r in results)) if results else set()
    chosen = list(metrics) if metrics is not None else [m for m in DEFAULT_TABLE_METRICS if m in available]
    main_names = {r.main_score_name for r in results}
    if len(main_names) == 1:  # already the first column
        chosen = [m for m in chosen if m not in main_names]
    return chosen


def markdown_table(results: Sequence[StageResult], metrics: Sequence[str] | None = None) -> str:
    """One row per model, dataset and stage; the main score first, then ``metrics`` (x100, 2 decimals).

    Example:
        >>> print(markdown_table(result.results))   # doctest: +SKIP
        | model | dataset | split | stage | main score | ndcg_at_10 | recall_at_100 | ...
    """
    if not results:
        return "(no results)\n"
    chosen = _table_metrics(results, metrics)
    header = ["model", "dataset", "split", "stage", "main score", *chosen]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * (1 + len(chosen))) + "|",
    ]
    for r in results:
        cells = [r.model, r.dataset, r.split, r.stage, f"{r.main_score_name} **{100 * r.main_score:.2f}**"]
        cells += [f"{100 * r.scores[m]:.2f}" if m in r.scores else "–" for m in chosen]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
