"""The mteb adapter's interface (mteb itself is not installed here; see benchmarks/mteb_check.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgekit import Embedder
from bgekit.errors import InputError
from bgekit.evaluation.mteb_adapter import MTEBEncoder


@pytest.fixture(scope="module")
def embedder(tiny_bert_dir: str) -> Embedder:
    return Embedder(
        tiny_bert_dir,
        pooling="mean",
        query_instruction="query: ",
        passage_instruction="passage: ",
        device="cpu",
        show_progress=False,
    )


class PromptTypeLike:
    """mteb 2's PromptType is a str enum; only ``.value`` matters."""

    def __init__(self, value: str) -> None:
        self.value = value


class TaskMetadataLike:
    def __init__(self, name: str) -> None:
        self.name = name


def test_mteb1_style_calls(embedder: Embedder) -> None:
    model = MTEBEncoder(embedder)
    texts = ["what do pandas eat", "koalas"]
    np.testing.assert_allclose(
        model.encode(texts, task_name="SciFact", prompt_type="query"), embedder.encode_queries(texts)
    )
    np.testing.assert_allclose(
        model.encode(texts, task_name="SciFact", prompt_type="passage"), embedder.encode_corpus(texts)
    )
    np.testing.assert_allclose(model.encode(texts, task_name="STS12"), embedder.encode(texts))
    assert not np.allclose(embedder.encode_queries(texts), embedder.encode(texts))  # instructions applied


def test_mteb2_style_batches(embedder: Embedder) -> None:
    model = MTEBEncoder(embedder)
    batches = [{"text": ["a title a body", "x"]}, {"text": ["y"], "title": ["t"], "body": ["b"]}]
    out = model.encode(
        batches,
        task_metadata=TaskMetadataLike("SciFact"),
        hf_split="test",
        hf_subset="default",
        prompt_type=PromptTypeLike("document"),
    )
    np.testing.assert_allclose(out, embedder.encode_corpus(["a title a body", "x", "y"]))
    queries = model.encode(
        [{"text": ["q1"]}], task_metadata=TaskMetadataLike("SciFact"), prompt_type=PromptTypeLike("query")
    )
    np.testing.assert_allclose(queries, embedder.encode_queries(["q1"]))


def test_per_task_query_instruction(embedder: Embedder) -> None:
    model = MTEBEncoder(embedder, query_instructions={"ArguAna": "Given a claim, find counter-arguments: "})
    got = model.encode(["claim"], task_name="ArguAna", prompt_type="query")
    np.testing.assert_allclose(
        got, embedder.encode(["claim"], instruction="Given a claim, find counter-arguments: ")
    )
    np.testing.assert_allclose(
        model.encode(["claim"], task_name="SciFact", prompt_type="query"), embedder.encode_queries(["claim"])
    )


def test_similarity_and_errors(embedder: Embedder) -> None:
    model = MTEBEncoder(embedder)
    a = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert torch.allclose(model.similarity(a, b), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    assert torch.allclose(model.similarity_pairwise(a, b), torch.tensor([0.6, 0.0]))
    with pytest.raises(InputError, match="prompt_type='summary'"):
        model.encode(["x"], prompt_type="summary")
    with pytest.raises(InputError, match="batch 0 is dict without a 'text' field"):
        model.encode([{"image": []}], prompt_type="query")
    assert model.revision == embedder.fingerprint()
