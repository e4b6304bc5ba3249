"""Quality of the fast paths (bf16, ONNX Runtime fp32, int8): cosine and rank agreement, never speed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bgekit import ConfigError, Embedder

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def sample(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[dict], list[str]]:
    docs = [{"title": d["title"], "text": d["text"]} for d in scifact_corpus[:120]]
    return docs, [q["text"] for q in scifact_queries[:30]]


@pytest.fixture(scope="module")
def fp32(minilm_copy: str, sample: tuple[list[dict], list[str]]) -> tuple[np.ndarray, np.ndarray]:
    model = Embedder(minilm_copy, device="cpu", passage_max_length=512)
    return model.encode_corpus(sample[0]), model.encode_queries(sample[1])


def _rank_agreement(q: np.ndarray, d: np.ndarray, q_ref: np.ndarray, d_ref: np.ndarray, k: int = 10) -> float:
    top = np.argsort(-(q @ d.T), axis=1)[:, :k]
    top_ref = np.argsort(-(q_ref @ d_ref.T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top, top_ref, strict=True)]))


def test_bf16_cosine_and_ranks(minilm_copy: str, sample: tuple, fp32: tuple) -> None:
    model = Embedder(minilm_copy, device="cpu", dtype="bf16", passage_max_length=512)
    docs, queries = model.encode_corpus(sample[0]), model.encode_queries(sample[1])
    assert float((docs * fp32[0]).sum(1).min()) >= 0.999
    assert _rank_agreement(queries, docs, fp32[1], fp32[0]) >= 0.95


def test_onnx_fp32_equals_torch(minilm_copy: str, sample: tuple, fp32: tuple) -> None:
    model = Embedder(minilm_copy, device="cpu", backend="onnx", passage_max_length=512)
    docs = model.encode_corpus(sample[0])
    assert float((docs * fp32[0]).sum(1).min()) >= 0.99999
    assert any(p.suffix == ".onnx" for p in (Path(minilm_copy) / "onnx").iterdir())


@pytest.mark.slow
def test_int8_cosine_and_ranks(minilm_copy: str, sample: tuple, fp32: tuple) -> None:
    model = Embedder(minilm_copy, device="cpu", quantization="int8", passage_max_length=512)
    assert model.backend == "onnx"
    docs, queries = model.encode_corpus(sample[0]), model.encode_queries(sample[1])
    assert float((docs * fp32[0]).sum(1).min()) >= 0.98
    assert float((docs * fp32[0]).sum(1).mean()) >= 0.99
    assert _rank_agreement(queries, docs, fp32[1], fp32[0]) >= 0.8
    # the cache is keyed by the model files: a second load reuses the export (activation scales are
    # per batch in dynamic quantisation, so compare the same inputs batched the same way)
    again = Embedder(minilm_copy, device="cpu", quantization="int8", passage_max_length=512)
    np.testing.assert_allclose(again.encode_corpus(sample[0]), docs, atol=1e-6)
    assert again.fingerprint() != Embedder(minilm_copy, device="cpu").fingerprint()


def test_bad_fast_path_options(tiny_bert_dir: str) -> None:
    with pytest.raises(ConfigError, match="quantization"):
        Embedder(tiny_bert_dir, quantization="int4")
    with pytest.raises(ConfigError, match="backend"):
        Embedder(tiny_bert_dir, backend="tensorrt")
    with pytest.raises(ConfigError, match="runs on backend='onnx'"):
        Embedder(tiny_bert_dir, backend="torch", quantization="int8")


def test_cross_encoder_fast_paths(
    minilm_cross_encoder: str, scifact_corpus: list[dict], scifact_queries: list[dict]
) -> None:
    from bgekit import Reranker

    pairs = [(q["text"], d["text"]) for q, d in zip(scifact_queries[:60], scifact_corpus[:60], strict=True)]
    fp32 = np.asarray(Reranker(minilm_cross_encoder, device="cpu").compute_score(pairs))
    onnx = np.asarray(Reranker(minilm_cross_encoder, device="cpu", backend="onnx").compute_score(pairs))
    np.testing.assert_allclose(onnx, fp32, atol=1e-4)
    bf16 = np.asarray(Reranker(minilm_cross_encoder, device="cpu", dtype="bf16").compute_score(pairs))
    int8 = np.asarray(Reranker(minilm_cross_encoder, device="cpu", quantization="int8").compute_score(pairs))
    for fast in (bf16, int8):
        assert np.corrcoef(fast, fp32)[0, 1] >= 0.98
    with pytest.raises(ConfigError, match="runs on backend='onnx'"):
        Reranker(minilm_cross_encoder, backend="torch", quantization="int8")
    with pytest.raises(ConfigError, match="needs backend='torch'"):
        Reranker(minilm_cross_encoder, backend="onnx", dtype="fp16")
    auto = Reranker(minilm_cross_encoder, device="cpu", dtype="auto")
    assert auto.dtype in ("bf16", "fp32") and next(auto.model.parameters()).dtype == auto.torch_dtype


def test_onnx_m3_heads_equal_torch(tmp_path: Path, tiny_m3_dir: str, scifact_corpus: list[dict]) -> None:
    """XLM-RoBERTa through ONNX: dense, sparse and ColBERT outputs equal the torch backend's."""
    folder = tmp_path / "m3"
    shutil.copytree(tiny_m3_dir, folder)
    texts = [d["text"][: 40 + 37 * i] for i, d in enumerate(scifact_corpus[:24])]  # many different lengths
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    torch_out = Embedder(str(folder), device="cpu", passage_max_length=128).encode(texts, **flags)
    onnx_out = Embedder(str(folder), device="cpu", backend="onnx", passage_max_length=128).encode(
        texts, **flags
    )
    np.testing.assert_allclose(onnx_out["dense_vecs"], torch_out["dense_vecs"], atol=1e-5)
    for mine, ref in zip(onnx_out["lexical_weights"], torch_out["lexical_weights"], strict=True):
        assert mine.keys() == ref.keys()
        np.testing.assert_allclose([mine[k] for k in ref], [ref[k] for k in ref], atol=1e-5)
    for mine, ref in zip(onnx_out["colbert_vecs"], torch_out["colbert_vecs"], strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-5)


def test_onnx_runner_packs_padded_batches(minilm_copy: str, sample: tuple) -> None:
    """A padded batch (right or left padding) gives each row what it gives alone, with zeros at the pads."""
    import torch
    from transformers import AutoTokenizer

    from bgekit.inference.embedder import file_fingerprint
    from bgekit.inference.onnx_backend import OnnxRunner, export_onnx

    path = export_onnx(minilm_copy, "feature-extraction", None, file_fingerprint(minilm_copy)[:16])
    runner = OnnxRunner(path, "feature-extraction")
    assert "attention_mask" not in runner.input_names  # fused mask-free attention: the runner must unpad
    tokenizer = AutoTokenizer.from_pretrained(minilm_copy)
    texts = ["a short one", sample[1][0], "a short two", sample[0][0]["text"][:300], "x"]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        out = runner(**batch).last_hidden_state
        for row, text in enumerate(texts):
            alone = runner(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(out[row][real], alone, atol=1e-5, rtol=1e-5)
            assert bool((out[row][~real] == 0).all())


def test_superseded_graphs_are_removed(tmp_path: Path, tiny_bert_dir: str) -> None:
    """A new export deletes cached graphs of older weights or formats, and only those of its precision."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    cache = folder / "onnx"
    cache.mkdir()
    older_format = cache / "feature-extraction-0123456789abcdef-fp32.onnx"
    other_precision = cache / "feature-extraction-0123456789abcdef-int8.onnx"
    older_version = cache / "feature-extraction-fedcba9876543210-fp32-v1.onnx"
    other_task = cache / "sequence-classification-0123456789abcdef-fp32.onnx"
    calibrated = (
        cache / "feature-extraction-0123456789abcdef-int8-static-v2.onnx"
    )  # the user's, never a cache
    for stale in (older_format, older_version, other_precision, other_task, calibrated):
        stale.write_bytes(b"not a graph")
    model = Embedder(str(folder), device="cpu", backend="onnx")
    assert model.encode_corpus(["one text"]).shape == (1, 32)
    graphs = sorted(p.name for p in cache.iterdir())
    assert older_format.name not in graphs and older_version.name not in graphs
    assert other_precision.exists() and other_task.exists() and calibrated.exists()
    assert len([g for g in graphs if g.startswith("feature-extraction") and "-fp32-" in g]) == 1
