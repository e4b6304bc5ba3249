"""Evaluation reports: a Markdown table, a JSON file with every metric and the configuration, a PNG plot.

Files written under the output folder: ``report.md``, ``report.json`` and ``recall_at_k.png`` (recall
against k, one panel per dataset, one line per model and stage, so models compare at a glance).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from bgekit.evaluation.results import EvaluationResult, StageResult, markdown_table
from bgekit.io import atomic_open

__all__ = ["markdown_table", "recall_curve_plot", "write_reports"]


def recall_curve_plot(results: Sequence[StageResult], path: str) -> str:
    """Save a PNG of Recall@k against k (log scale): one panel per dataset, one line per model/stage."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r.dataset for r in results))
    columns = min(3, len(datasets)) or 1
    rows = (len(datasets) + columns - 1) // columns or 1
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    pattern = re.compile(r"^recall_at_(\d+)$")
    for number, dataset in enumerate(datasets):
        ax = axes[number // columns][number % columns]
        for r in (r for r in results if r.dataset == dataset):
            points = sorted(
                (int(m.group(1)), v) for name, v in r.scores.items() if (m := pattern.match(name))
            )
            label = r.model if r.stage == "retrieval" else f"{r.model} + rerank"
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for number in range(len(datasets), rows * columns):
        axes[number // columns][number % columns].axis("off")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path


def write_reports(
    result: EvaluationResult, output_dir: str, metrics: Sequence[str] | None = None
) -> dict[str, str]:
    """Write ``report.md``, ``report.json`` and ``recall_at_k.png``; return ``{kind: path}``."""
    os.makedirs(output_dir, exist_ok=True)
    files: dict[str, str] = {}
    md_path = os.path.join(output_dir, "report.md")
    with atomic_open(md_path, "w", encoding="utf-8") as handle:
        handle.write(markdown_table(result.results, metrics))
    files["markdown"] = md_path
    json_path = os.path.join(output_dir, "report.json")
    payload: dict[str, Any] = result.to_dict()
    with atomic_open(json_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
    files["json"] = json_path
    if result.results:
        files["plot"] = recall_curve_plot(result.results, os.path.join(output_dir, "recall_at_k.png"))
    return files
