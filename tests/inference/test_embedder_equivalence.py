"""The real MiniLM model on real SciFact text equals sentence-transformers and FlagEmbedding."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bgekit import Embedder

N_DOCS = 500
# canonical values (first 5 dims of documents 0, 1 and 499 of SciFact, title + text, max length 512),
# pinned from sentence-transformers 5.7 so the test still means something without the reference packages
PINNED = {
    0: [0.068776, -0.127321, -0.010191, 0.038645, 0.005804],
    1: [-0.110989, 0.003982, -0.034620, -0.074954, 0.008151],
    499: [0.007603, -0.082626, 0.030983, 0.049557, -0.030001],
}


def _texts(corpus: list[dict]) -> list[str]:
    return [f"{d['title']} {d['text']}".strip() for d in corpus]


@pytest.fixture(scope="module")
def docs(scifact_corpus: list[dict]) -> list[dict]:
    return [{"title": d["title"], "text": d["text"]} for d in scifact_corpus[:N_DOCS]]


@pytest.fixture(scope="module")
def model512(minilm_path: str) -> Embedder:
    return Embedder(minilm_path, device="cpu", query_max_length=512, passage_max_length=512)


@pytest.fixture(scope="module")
def ours512(model512: Embedder, docs: list[dict]) -> np.ndarray:
    return model512.encode_corpus(docs)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def test_pinned_canonical_values(ours512: np.ndarray) -> None:
    assert ours512.shape == (N_DOCS, 384) and ours512.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours512, axis=1), 1.0, atol=1e-5)
    for row, values in PINNED.items():
        np.testing.assert_allclose(ours512[row, :5], values, atol=2e-5)


@pytest.mark.slow
def test_equals_sentence_transformers(minilm_path: str, docs: list[dict], ours512: np.ndarray) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(minilm_path, device="cpu")
    reference.max_seq_length = 512
    expected = reference.encode(_texts(docs), normalize_embeddings=True, batch_size=32)
    assert _min_cosine(ours512, expected) >= 0.99999


@pytest.mark.slow
def test_equals_flagembedding(minilm_path: str, docs: list[dict], ours512: np.ndarray) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    reference = flag.FlagModel(
        minilm_path, pooling_method="mean", passage_max_length=512, use_fp16=False, devices=["cpu"]
    )
    expected = reference.encode_corpus(_texts(docs[:200]), batch_size=64)
    assert _min_cosine(ours512[:200], expected) >= 0.99999


def test_default_length_and_settings_follow_sentence_transformers(minilm_path: str) -> None:
    model = Embedder(minilm_path, device="cpu")
    s = model.settings
    assert (s.pooling, s.normalize, s.query_max_length, s.passage_max_length) == ("mean", True, 256, 256)
    assert model.settings_origin["pooling"] == "sentence-transformers"
    assert model.dim == 384


@pytest.mark.slow
def test_default_length_equals_sentence_transformers_defaults(minilm_path: str, docs: list[dict]) -> None:
    st = pytest.importorskip("sentence_transformers")
    ours = Embedder(minilm_path, device="cpu").encode_corpus(docs[:150])
    expected = st.SentenceTransformer(minilm_path, device="cpu").encode(_texts(docs[:150]))  # max 256
    assert _min_cosine(ours, expected) >= 0.99999


def test_batch_size_one_and_shuffled_order(minilm_path: str, docs: list[dict], ours512: np.ndarray) -> None:
    model = Embedder(minilm_path, device="cpu", passage_max_length=512, batch_size=1)
    subset = list(range(0, N_DOCS, 12))
    single = model.encode_corpus([docs[i] for i in subset])
    assert _min_cosine(single, ours512[subset]) >= 0.99999
    order = list(range(0, N_DOCS, 2))
    random.Random(7).shuffle(order)
    shuffled = Embedder(minilm_path, device="cpu", passage_max_length=512).encode_corpus(
        [docs[i] for i in order]
    )
    assert _min_cosine(shuffled, ours512[order]) >= 0.99999


@pytest.mark.slow
def test_two_cpu_workers_match(minilm_path: str, docs: list[dict], ours512: np.ndarray) -> None:
    with Embedder(minilm_path, devices=["cpu", "cpu"], passage_max_length=512) as model:
        pooled = model.encode_corpus(docs)
    assert pooled.shape == ours512.shape
    assert _min_cosine(pooled, ours512) >= 0.99999
