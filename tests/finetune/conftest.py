"""Fixtures for fine-tuning tests: small training files in FlagEmbedding's format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import build_tiny_bert, toy_rows, write_jsonl


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
