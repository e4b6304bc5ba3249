"""The OpenVINO backend: the same outputs as PyTorch fp32 (fp32) or close to them (bf16), never speed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bgekit import ConfigError, Embedder, Reranker

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def texts(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[dict], list[str]]:
    docs = [{"title": d["title"], "text": d["text"]} for d in scifact_corpus[:60]]
    return docs, [q["text"] for q in scifact_queries[:40]]


def test_fp32_equals_torch_and_bf16_is_close(minilm_copy: str, texts: tuple) -> None:
    """Real MiniLM on SciFact documents (padded batches) and queries (packed batches)."""
    torch_model = Embedder(minilm_copy, device="cpu", passage_max_length=512)
    docs_ref, queries_ref = torch_model.encode_corpus(texts[0]), torch_model.encode_queries(texts[1])
    fp32 = Embedder(minilm_copy, device="cpu", backend="openvino", dtype="fp32", passage_max_length=512)
    assert (fp32.backend, fp32.dtype) == ("openvino", "fp32")
    assert any(p.name.endswith("-packed-v2.onnx") for p in (Path(minilm_copy) / "onnx").iterdir())
    np.testing.assert_allclose(fp32.encode_corpus(texts[0]), docs_ref, atol=1e-5)
    np.testing.assert_allclose(fp32.encode_queries(texts[1]), queries_ref, atol=1e-5)
    groups = [fp32.encode_queries(texts[1][i : i + 9]) for i in range(0, 36, 9)]  # a server's small groups
    np.testing.assert_allclose(np.concatenate(groups), queries_ref[:36], atol=1e-5)
    bf16 = Embedder(minilm_copy, device="cpu", backend="openvino", dtype="bf16", passage_max_length=512)
    assert float((bf16.encode_corpus(texts[0]) * docs_ref).sum(1).min()) >= 0.999
    assert float((bf16.encode_queries(texts[1]) * queries_ref).sum(1).min()) >= 0.999


def test_padded_and_packed_batches_agree(
    minilm_copy: str, texts: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch runs padded (mask fed) or packed (no padding): each row gets what it gets alone either way."""
    import torch
    from transformers import AutoTokenizer

    from bgekit.inference import openvino_backend
    from bgekit.inference.embedder import file_fingerprint
    from bgekit.inference.onnx_backend import export_onnx

    packed: list[int] = []
    real_packed = openvino_backend.run_packed
    monkeypatch.setattr(
        openvino_backend,
        "run_packed",
        lambda *a: packed.append(1) or real_packed(*a),  # type: ignore[func-returns-value]
    )
    path = export_onnx(
        minilm_copy, "feature-extraction", None, file_fingerprint(minilm_copy)[:16], fuse=False
    )
    runner = openvino_backend.OpenVinoRunner(path, "feature-extraction", "fp32")
    tokenizer = AutoTokenizer.from_pretrained(minilm_copy)
    query, passage = texts[1][0], texts[0][0]["text"][:300]
    cases = {  # texts, side -> packed?
        "many rows of two lengths, much padding": ([query] * 8 + [passage] * 8, "right", True),
        "a few rows of many lengths": (["x", query, "a short one", passage], "right", False),
        "little padding": ([texts[1][1], texts[1][1] + " again"], "right", False),
        "left padding (position ids)": ([texts[1][1], texts[1][1] + " again"], "left", True),
    }
    for case, (batch_texts, side, want_packed) in cases.items():
        tokenizer.padding_side = side
        batch = tokenizer(batch_texts, padding=True, return_tensors="pt")
        packed.clear()
        out = runner(**batch).last_hidden_state
        assert bool(packed) == want_packed, case
        for row, text in enumerate(batch_texts):
            alone = runner(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(out[row][real], alone, atol=1e-4, rtol=1e-4)


def test_packed_rows_give_each_text_what_it_gets_alone(
    minilm_copy: str, texts: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed graph: short texts share rows in one call, each attending only to itself."""
    import torch
    from transformers import AutoTokenizer

    from bgekit.inference import openvino_backend
    from bgekit.inference.embedder import file_fingerprint
    from bgekit.inference.onnx_backend import export_onnx
    from bgekit.inference.packing import PACK_ROW_TOKENS

    path = export_onnx(
        minilm_copy, "feature-extraction", None, file_fingerprint(minilm_copy)[:16], fuse=False, packed=True
    )
    runner = openvino_backend.OpenVinoRunner(path, "feature-extraction", "fp32", position_offset=0)
    fed: list[tuple[int, ...]] = []
    real_infer = runner._infer
    monkeypatch.setattr(
        runner, "_infer", lambda given: fed.append(tuple(given["input_ids"].shape)) or real_infer(given)
    )
    tokenizer = AutoTokenizer.from_pretrained(minilm_copy)
    queries, passage = list(texts[1][:12]), texts[0][0]["text"]
    cases = {  # texts, side -> rows fed (None: as many as the batch has)
        # 267 tokens: first fit fills 3 rows of up to 121, spread evenly 4 rows of 67 run fewer slots
        "many short texts of many lengths": (queries, "right", 4),
        "one longer than a row among short ones: one text per row": ([passage, *queries[:6]], "right", None),
        "left padding": (queries[:6], "left", 1),
        "little padding: one text per row": ([queries[1], queries[1] + " again"], "right", None),
    }
    for case, (batch_texts, side, rows) in cases.items():
        tokenizer.padding_side = side
        batch = tokenizer(batch_texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        fed.clear()
        out = runner(**batch).last_hidden_state
        assert len(fed) == 1 and fed[0][0] == (rows or len(batch_texts)), (case, fed)
        assert fed[0][1] <= max(PACK_ROW_TOKENS, batch["input_ids"].shape[1]), case
        for row, text in enumerate(batch_texts):
            alone = runner(**tokenizer([text], truncation=True, max_length=256, return_tensors="pt"))
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(out[row][real], alone.last_hidden_state[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="disagree"):
        openvino_backend.OpenVinoRunner(path, "feature-extraction", "fp32")
    with pytest.raises(ConfigError, match="empty"):
        runner(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.zeros(2, 3))


def test_cross_encoder_on_openvino(
    minilm_cross_encoder: str, scifact_corpus: list, scifact_queries: list
) -> None:
    pairs = [(q["text"], d["text"]) for q, d in zip(scifact_queries[:40], scifact_corpus[:40], strict=True)]
    ref = np.asarray(Reranker(minilm_cross_encoder, device="cpu").compute_score(pairs))
    fp32 = Reranker(minilm_cross_encoder, device="cpu", backend="openvino")
    np.testing.assert_allclose(np.asarray(fp32.compute_score(pairs)), ref, atol=1e-4)
    bf16 = Reranker(minilm_cross_encoder, device="cpu", backend="openvino", dtype="bf16")
    assert np.corrcoef(np.asarray(bf16.compute_score(pairs)), ref)[0, 1] >= 0.99


def test_dynamic_int8_keeps_full_quality(minilm_copy: str, minilm_cross_encoder: str, texts: tuple) -> None:
    """int8 weights, inputs quantised per group at run time: cosine >= 0.995 with no calibration texts."""
    from scipy.stats import spearmanr

    docs, queries = texts
    ref = Embedder(minilm_copy, device="cpu", passage_max_length=512)
    docs_ref, queries_ref = ref.encode_corpus(docs), ref.encode_queries(queries)
    int8 = Embedder(
        minilm_copy, device="cpu", backend="openvino", quantization="int8", passage_max_length=512
    )
    got = int8.encode_corpus(docs)
    assert float(np.abs(got - docs_ref).max()) > 1e-3  # the MatMuls did run in int8
    assert float((got * docs_ref).sum(1).min()) >= 0.995
    assert float((int8.encode_queries(queries) * queries_ref).sum(1).min()) >= 0.995
    (graph,) = (Path(minilm_copy) / "onnx").glob("*-packed-v2-int8-openvino.xml")
    assert graph.with_suffix(".bin").is_file()
    written = graph.stat().st_mtime_ns
    again = Embedder(
        minilm_copy, device="cpu", backend="openvino", quantization="int8", passage_max_length=512
    )
    assert float((again.encode_corpus(docs[:8]) * docs_ref[:8]).sum(1).min()) >= 0.995
    assert graph.stat().st_mtime_ns == written  # the cached IR, not a second compression

    pairs = [(q, d["text"]) for q, d in zip(queries, docs, strict=False)]
    scores = np.asarray(Reranker(minilm_cross_encoder, device="cpu").compute_score(pairs))
    ranker = Reranker(minilm_cross_encoder, device="cpu", backend="openvino", quantization="int8")
    assert spearmanr(np.asarray(ranker.compute_score(pairs)), scores).statistic >= 0.99


def test_a_new_export_removes_the_int8_graphs_of_older_weights(tmp_path: Path, tiny_bert_dir: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    cache = folder / "onnx"
    cache.mkdir()
    old = "feature-extraction-0123456789abcdef-packed-v2"
    stale = [cache / f"{old}.onnx", cache / f"{old}-int8-openvino.xml", cache / f"{old}-int8-openvino.bin"]
    calibrated = [
        cache / f"feature-extraction-0123456789abcdef-int8-static-openvino-v2.{e}" for e in ("xml", "bin")
    ]
    for path in stale + calibrated:
        path.write_bytes(b"not a graph")
    model = Embedder(str(folder), device="cpu", backend="openvino", quantization="int8")
    assert model.encode_corpus(["one text"]).shape == (1, 32)
    names = sorted(p.name for p in cache.iterdir())
    assert not any(path.exists() for path in stale), names
    assert all(path.exists() for path in calibrated)  # a graph the user calibrated is never a cache
    assert len([n for n in names if n.endswith("-packed-v2-int8-openvino.xml")]) == 1  # this model's own


def test_m3_heads_on_openvino(
    tmp_path: Path, tiny_m3_dir: str, scifact_corpus: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """XLM-RoBERTa through OpenVINO fp32, packed rows included (positions from padding id + 1): dense,
    sparse and ColBERT outputs equal PyTorch's."""
    from bgekit.inference import openvino_backend

    capacities: list[int | None] = []
    real_batch = openvino_backend.PackedBatch
    monkeypatch.setattr(
        openvino_backend,
        "PackedBatch",
        lambda *a, **k: capacities.append(k["capacity"]) or real_batch(*a, **k),  # type: ignore[func-returns-value]
    )
    folder = tmp_path / "m3"
    shutil.copytree(tiny_m3_dir, folder)
    docs = [d["text"][: 40 + 37 * i] for i, d in enumerate(scifact_corpus[:24])]
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ref = Embedder(str(folder), device="cpu", passage_max_length=128).encode(docs, **flags)
    out = Embedder(str(folder), device="cpu", backend="openvino", passage_max_length=128).encode(
        docs, **flags
    )
    np.testing.assert_allclose(out["dense_vecs"], ref["dense_vecs"], atol=1e-5)
    for mine, theirs in zip(out["lexical_weights"], ref["lexical_weights"], strict=True):
        assert mine.keys() == theirs.keys()
        np.testing.assert_allclose([mine[k] for k in theirs], [theirs[k] for k in theirs], atol=1e-5)
    for mine, theirs in zip(out["colbert_vecs"], ref["colbert_vecs"], strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    assert any(capacity is not None for capacity in capacities)  # some batch ran in shared rows


def test_two_streams_run_calls_at_once_with_the_same_outputs(minilm_copy: str, texts: tuple) -> None:
    """``set_streams(2)``: two threads encode at once on two OpenVINO streams; rows equal one stream's."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    if torch.get_num_threads() < 2:
        pytest.skip("two streams need two threads")
    model = Embedder(minilm_copy, device="cpu", backend="openvino", dtype="fp32")
    queries = texts[1]
    want = model.encode_queries(queries)
    model.set_streams(2)
    assert model.model.compiled.get_property("NUM_STREAMS") == 2
    chunks = [queries[i : i + 5] for i in range(0, len(queries), 5)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(model.encode_queries, chunks))
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)
    threads = torch.get_num_threads()
    with pytest.raises(ConfigError, match=f"streams={threads + 1} is not valid; expected 1 to {threads}"):
        model.set_streams(threads + 1)
    with pytest.raises(ConfigError, match="streams=2 needs backend='openvino'"):
        Embedder(minilm_copy, device="cpu").set_streams(2)


def test_bad_requests_name_the_problem(
    minilm_copy: str, decoder_dirs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="'int8' runs on backend='onnx' .* or 'openvino'"):
        Embedder(minilm_copy, backend="torch", quantization="int8")
    with pytest.raises(ConfigError, match="'torch', 'onnx', 'openvino' or 'auto'"):
        Embedder(minilm_copy, backend="tensorrt")
    with pytest.raises(ConfigError, match="backend='openvino' supports encoder models"):
        Embedder(decoder_dirs[("llama", "left")], backend="openvino", kind="decoder")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'bgekit\[openvino\]'"):
        Embedder(minilm_copy, backend="openvino").encode_queries(["a question"])


def test_serve_on_openvino(minilm_copy: str, minilm_cross_encoder: str) -> None:
    """`bgekit serve --backend openvino`: the server's model thread runs OpenVINO, answers equal the library's."""
    import argparse
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from fastapi.testclient import TestClient

    from bgekit.cli.serve import add_arguments, build_app

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = [
        "--model",
        minilm_copy,
        "--reranker",
        minilm_cross_encoder,
        "--backend",
        "openvino",
        "--dtype",
        "fp32",
        "--streams",
        "2",
    ]
    app = build_app(parser.parse_args(args))
    texts = ["a short query", "a longer passage about retrieval and the vectors that serve it " * 5]
    many = [f"query number {i} about {'vectors ' * i}" for i in range(12)]
    # about 2,000 tokens in one request while both streams are idle: the group is split between them
    long = [f"passage {i}: {'the vectors that serve retrieval ' * (4 + i)}" for i in range(24)]
    threads = torch.get_num_threads()
    with TestClient(app, base_url="http://localhost") as client:
        while client.get("/health").status_code != 200:  # the warm-up runs on the worker thread
            time.sleep(0.05)
        assert _fresh_thread_torch_threads() == 1  # torch's work around the graphs: one thread
        assert client.get("/info").json()["model"]["backend"] == "openvino"
        vectors = client.post("/embed", json={"inputs": texts}).json()
        while app.state.worker.idle_threads < 2:  # the last group's thread is back to waiting
            time.sleep(0.01)
        shared = client.post("/embed", json={"inputs": long}).json()
        assert "bgekit_shared_groups_total 1.0" in client.get("/metrics").text
        with ThreadPoolExecutor(6) as pool:  # requests at once: groups run on both streams
            answers = list(pool.map(lambda t: client.post("/embed", json={"inputs": [t]}).json(), many))
        ranked = client.post(
            "/rerank", json={"query": "what serves vectors?", "texts": texts, "raw_scores": True}
        )
    np.testing.assert_allclose(
        np.asarray(vectors), Embedder(minilm_copy, device="cpu").encode_corpus(texts), atol=1e-5
    )
    assert _fresh_thread_torch_threads() == threads  # given back when the server stops
    np.testing.assert_allclose(
        np.asarray(shared), Embedder(minilm_copy, device="cpu").encode_corpus(long), atol=1e-5
    )
    np.testing.assert_allclose(
        np.concatenate(answers), Embedder(minilm_copy, device="cpu").encode_corpus(many), atol=1e-5
    )
    with pytest.raises(ConfigError, match="streams=2 needs backend='openvino'"):
        build_app(parser.parse_args(["--model", minilm_copy, "--streams", "2"]))
    want = Reranker(minilm_cross_encoder, device="cpu").compute_score(
        [("what serves vectors?", t) for t in texts]
    )
    got = {row["index"]: row["score"] for row in ranked.json()}
    np.testing.assert_allclose([got[0], got[1]], want, atol=1e-4)


def _fresh_thread_torch_threads() -> int:
    """torch's thread count as a thread started now sees it (each thread keeps the count it started with)."""
    import threading

    import torch

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_openvino_and_nncf_are_imported_with_their_usage_reports_off() -> None:
    pytest.importorskip("nncf")
    import os
    import subprocess

    # a fresh interpreter without CI switches: under pytest NNCF silences itself, and OpenVINO reads its
    # switch once, at the first import
    code = (
        "import os\n"
        "from bgekit.inference.openvino_backend import import_nncf\n"
        "import_nncf('this test')\n"
        "import openvino_telemetry\n"
        "from nncf.telemetry.wrapper import NNCFTelemetryStub, telemetry\n"
        "assert openvino_telemetry.Telemetry().consent is False\n"
        "assert isinstance(telemetry, NNCFTelemetryStub), type(telemetry)\n"
        "assert 'NNCF_CI' not in os.environ and 'CI' not in os.environ\n"
        "print('ok')\n"
    )
    switches = ("CI", "NNCF_CI", "NNCF_DEV", "TF_BUILD", "JENKINS_URL", "BGEKIT_OPENVINO_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in switches}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
