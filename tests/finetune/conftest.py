"""Fixtures for fine-tuning tests: small training files in FlagEmbedding's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import build_tiny_bert  # tests/conftest.py (pytest puts tests/ on sys.path)

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


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny BERT without dropout: runs on different process counts compute the same numbers."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-nodrop"),
        minilm_tokenizer_dir,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
