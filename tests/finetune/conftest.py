"""Fixtures for fine-tuning tests: small training files in FlagEmbedding's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = [
    "apple",
    "banana",
    "cherry",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def toy_rows(n: int = 8, negatives: int = 4, scores: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        row: dict = {
            "query": f"what is {w}?",
            "pos": [f"{w} is a word about {w} things"],
            "neg": [
                f"{WORDS[(i + k + 1) % len(WORDS)]} is unrelated text number {k}" for k in range(negatives)
            ],
        }
        if scores:
            row["pos_scores"] = [5.0]
            row["neg_scores"] = [float(-k) for k in range(negatives)]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def toy_train_file(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", toy_rows(8, 4, scores=True))
