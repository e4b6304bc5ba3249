"""Output quantisation equals sentence-transformers' and its rescored search keeps the float ranking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bgekit import ConfigError, Embedder
from bgekit.inference.quantize import compute_ranges, quantize_embeddings, search_quantized

st_quant = pytest.importorskip("sentence_transformers.util.quantization")


@pytest.fixture(scope="module")
def vectors(tiny_bert_dir: str, minilm_path: str, scifact_corpus: list[dict], scifact_queries: list[dict]):
    model = Embedder(minilm_path, device="cpu", dtype="bf16")
    docs = model.encode_corpus([{"title": d["title"], "text": d["text"]} for d in scifact_corpus[:300]])
    queries = model.encode_queries([q["text"] for q in scifact_queries[:40]])
    return docs, queries


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary", "float32"])
def test_equals_sentence_transformers(vectors: tuple, precision: str) -> None:
    docs, _ = vectors
    calibration = docs[:200]
    ours = quantize_embeddings(docs, precision, calibration_embeddings=calibration)
    theirs = st_quant.quantize_embeddings(docs, precision=precision, calibration_embeddings=calibration)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    if precision.endswith("int8"):
        ranges = compute_ranges(calibration)
        np.testing.assert_array_equal(quantize_embeddings(docs, precision, ranges=ranges), theirs)


@given(arrays(np.float32, (5, 16), elements=st.floats(-1, 1, width=32)))
@settings(max_examples=50, deadline=None)
def test_property_same_as_reference(x: np.ndarray) -> None:
    for precision in ("int8", "ubinary", "binary"):
        np.testing.assert_array_equal(
            quantize_embeddings(x, precision, ranges=np.vstack([x.min(0), x.max(0)])),
            st_quant.quantize_embeddings(x, precision=precision, ranges=np.vstack([x.min(0), x.max(0)])),
        )


@pytest.mark.parametrize("precision", ["ubinary", "binary", "int8"])
def test_rescored_search_keeps_most_of_the_float_top10(vectors: tuple, precision: str) -> None:
    docs, queries = vectors
    ranges = compute_ranges(docs)
    corpus = quantize_embeddings(docs, precision, ranges=ranges)
    _, ids = search_quantized(queries, corpus, precision, top_k=10, ranges=ranges, rescore_multiplier=4)
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert overlap >= (0.85 if precision == "int8" else 0.6)
    # rescoring can only help the top result agree with exact search
    _, plain = search_quantized(queries, corpus, precision, top_k=10, ranges=ranges, rescore=False)
    assert np.mean(ids[:, 0] == exact[:, 0]) >= np.mean(plain[:, 0] == exact[:, 0]) - 0.05


def test_ubinary_search_equals_sentence_transformers(vectors: tuple) -> None:
    pytest.importorskip("faiss")
    docs, queries = vectors
    corpus = quantize_embeddings(docs, "ubinary")
    scores, ids = search_quantized(queries, corpus, "ubinary", top_k=5, rescore_multiplier=2)
    results, _ = st_quant.semantic_search_faiss(
        queries, corpus_embeddings=corpus, corpus_precision="ubinary", top_k=5, rescore_multiplier=2
    )
    for row, hits in enumerate(results):
        np.testing.assert_allclose(scores[row], [h["score"] for h in hits], rtol=1e-5)
        # equal scores may come back in either order; compare the sets of ids
        assert {h["corpus_id"] for h in hits} == {int(i) for i in ids[row]}


def test_bad_precision_and_input() -> None:
    with pytest.raises(ConfigError, match="precision"):
        quantize_embeddings(np.zeros((2, 8), np.float32), "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be float"):
        quantize_embeddings(np.zeros((2, 8), np.int8), "binary")
    with pytest.raises(ValueError, match="ranges must have shape"):
        quantize_embeddings(np.zeros((2, 8), np.float32), "int8", ranges=np.zeros((2, 4)))
