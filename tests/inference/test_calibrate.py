"""Static int8 calibration on the real MiniLM with SciFact texts: quality on held-out texts, the refusal
below the threshold, reload by path, atomic output, and the ``bgekit quantize`` command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from bgekit import Embedder  # noqa: E402
from bgekit.cli.main import main  # noqa: E402
from bgekit.errors import ConfigError, InputError  # noqa: E402
from bgekit.inference.calibrate import CalibrationError, calibrate_int8  # noqa: E402

pytestmark = pytest.mark.slow
CALIBRATION, HELD_OUT = 96, 64


@pytest.fixture(scope="module")
def documents(scifact_corpus: list[dict]) -> list[dict[str, str]]:
    return [{"title": r["title"], "text": r["text"]} for r in scifact_corpus[: CALIBRATION + HELD_OUT]]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, minilm_path: str, documents: list) -> tuple:
    out = str(tmp_path_factory.mktemp("calibrated") / "minilm-int8")
    return out, calibrate_int8(minilm_path, documents, out, held_out=HELD_OUT)


def test_calibrated_graph_reaches_threshold_on_held_out_texts(calibrated: tuple) -> None:
    _, report = calibrated
    assert report.calibration_texts == CALIBRATION and report.held_out_texts == HELD_OUT
    assert report.min_cosine >= 0.995
    assert report.min_cosine <= report.mean_cosine < 1.0  # int8, not a copy of the fp32 graph
    assert "ffn-output" in report.fp32_groups and len(report.fp32_nodes) >= 6  # 6 layers


def test_saved_graph_reloads_by_path_with_the_checked_vectors(
    calibrated: tuple, minilm_path: str, documents: list
) -> None:
    out, report = calibrated
    assert os.path.isfile(report.path) and report.path.startswith(out)
    held_out = documents[-HELD_OUT:]
    reloaded = Embedder(out, device="cpu", quantization="int8-static").encode_corpus(held_out)
    reference = Embedder(minilm_path, device="cpu").encode_corpus(held_out)
    cosines = (np.asarray(reloaded) * np.asarray(reference)).sum(1)
    # the graph on disk is the graph that was checked: the same figures come back
    assert float(cosines.min()) == pytest.approx(report.min_cosine, abs=1e-5)
    assert float(cosines.mean()) == pytest.approx(report.mean_cosine, abs=1e-5)
    again = Embedder(out, device="cpu", quantization="int8-static").encode_corpus(held_out[:8])
    np.testing.assert_allclose(again, np.asarray(reloaded)[:8], atol=1e-6)


def test_impossible_threshold_is_refused_and_leaves_the_old_folder(
    tmp_path: pytest.TempPathFactory, minilm_path: str, documents: list
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.txt").write_text("previous model")
    with pytest.raises(CalibrationError, match=r"minimum cosine of 0\.9\d+ .*below threshold=1\.0"):
        calibrate_int8(
            minilm_path, documents[:48], str(out), held_out=16, threshold=1.0, keep_fp32="ffn-output"
        )
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staged folder left behind
    assert sorted(os.listdir(out)) == ["marker.txt"]


def test_cli_quantize_refuses_below_threshold_with_the_figure(
    tmp_path: pytest.TempPathFactory,
    minilm_path: str,
    documents: list,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": str(i), **d} for i, d in enumerate(documents[:48])]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["quantize", "--model", minilm_path, "--corpus", str(corpus), "--out", str(out)]
    code = main(
        [*argv, "--samples", "32", "--held-out", "16", "--threshold", "1.0", "--keep-fp32", "ffn-output"]
    )
    assert code == 2
    assert "below threshold=1.0" in capsys.readouterr().err
    assert not out.exists()


def test_int8_static_without_a_calibrated_graph_says_how_to_make_one(
    tmp_path: pytest.TempPathFactory, minilm_path: str
) -> None:
    copy = tmp_path / "minilm"
    shutil.copytree(minilm_path, copy, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(ConfigError, match="bgekit quantize --model"):
        Embedder(str(copy), device="cpu", quantization="int8-static").encode(["a text"])


def test_too_few_texts_and_bad_items_are_named(minilm_path: str, tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(InputError, match="at least held_out \\+ 16 = 116 texts"):
        calibrate_int8(minilm_path, ["a"] * 20, str(tmp_path / "x"), held_out=100)
    with pytest.raises(InputError, match="calibration text 1 must be a string"):
        calibrate_int8(minilm_path, ["a", 3] * 100, str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="unknown groups \\['pooler'\\]"):
        calibrate_int8(minilm_path, ["a"] * 200, str(tmp_path / "x"), keep_fp32=["pooler"])
    with pytest.raises(InputError, match="at least 8 queries, got 3"):
        calibrate_int8(minilm_path, ["a"] * 200, str(tmp_path / "x"), queries=["q"] * 3)
    with pytest.raises(InputError, match="calibration query 2 must be a non-empty string"):
        calibrate_int8(minilm_path, ["a"] * 200, str(tmp_path / "x"), queries=["q", "q", " "] * 4)


@pytest.fixture(scope="module")
def calibrated_openvino(tmp_path_factory: pytest.TempPathFactory, minilm_path: str, documents: list) -> tuple:
    pytest.importorskip("nncf")
    out = str(tmp_path_factory.mktemp("calibrated-ov") / "minilm-ov-int8")
    return out, calibrate_int8(minilm_path, documents, out, held_out=HELD_OUT, backend="openvino")


def test_openvino_int8_reaches_threshold_and_reloads_with_the_checked_vectors(
    calibrated_openvino: tuple, minilm_path: str, documents: list
) -> None:
    import openvino

    out, report = calibrated_openvino
    assert report.path.endswith("-int8-static-openvino-v2.xml") and report.path.startswith(out)
    assert sorted(os.listdir(os.path.dirname(report.path))) == sorted(
        [os.path.basename(report.path), os.path.basename(report.path)[: -len(".xml")] + ".bin"]
    )
    assert report.min_cosine >= 0.995 and report.min_cosine <= report.mean_cosine < 1.0
    graph = openvino.Core().read_model(report.path)
    quantizers = [op for op in graph.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(quantizers) >= 18  # int8 MatMuls in all 6 layers, not a copy of the fp32 graph
    # the last layer whole (8 MatMuls of the packed graph, attention's two included), and in layers 0-4
    # one MatMul per other group (the first layer's alone for first-ffn-output)
    assert report.fp32_groups[-1] == "last-layer"
    unquantised = set(report.fp32_nodes)
    last = {name for name in unquantised if "layer.5/" in name}
    others = sum(1 if group == "first-ffn-output" else 5 for group in report.fp32_groups[:-1])
    assert len(last) == 8 and len(unquantised - last) == others
    held_out = documents[-HELD_OUT:]
    model = Embedder(out, device="cpu", backend="openvino", quantization="int8-static", dtype="auto")
    reloaded = np.asarray(model.encode_corpus(held_out))
    reference = np.asarray(Embedder(minilm_path, device="cpu").encode_corpus(held_out))
    cosines = (reloaded * reference).sum(1)
    assert float(cosines.min()) == pytest.approx(report.min_cosine, abs=1e-5)
    # many short texts of many lengths run as packed rows through the same int8 graph: each as if alone
    titles = [d["title"] for d in documents[:24]]
    together = np.asarray(model.encode_corpus(titles))
    alone = np.asarray([model.encode_corpus([t])[0] for t in titles[:6]])
    np.testing.assert_allclose(together[:6], alone, atol=2e-2)
    assert float((together[:6] * alone).sum(1).min()) >= 0.999


def test_cli_quantize_with_queries_checks_them_as_queries(
    tmp_path: pytest.TempPathFactory,
    minilm_path: str,
    scifact_dir: pytest.TempPathFactory,
    scifact_queries: list[dict],
    scifact_corpus: list[dict],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("nncf")
    samples = 200  # fewer queries than this can leave a rare query's ranges uncovered (96 did)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in scifact_corpus[: samples + HELD_OUT]))
    out = tmp_path / "out"
    argv = ["quantize", "--backend", "openvino", "--model", minilm_path, "--corpus", str(corpus)]
    argv += ["--queries", str(scifact_dir / "queries.jsonl"), "--out", str(out)]
    assert main([*argv, "--samples", str(samples), "--held-out", str(HELD_OUT)]) == 0
    message = capsys.readouterr().err
    # a seeded sample of the 1,109 queries: 200 calibrate beside the 200 documents, 64 are checked
    assert f"calibrated on {samples} texts and {samples} queries" in message
    assert f"{HELD_OUT} held-out texts and {HELD_OUT} queries (queries alone: min 0.99" in message
    figure = float(message.split("queries alone: min ")[1].split(")")[0])
    assert figure >= 0.995
    # the figure is the reloaded graph's, over queries encoded as queries, none of them calibrated on
    import random

    texts = [q["text"] for q in scifact_queries]
    sample = random.Random(0).sample(texts, samples + HELD_OUT)
    held_out = sample[-HELD_OUT:]
    model = Embedder(str(out), device="cpu", backend="openvino", quantization="int8-static", dtype="auto")
    cosines = (
        np.asarray(model.encode_queries(held_out))
        * np.asarray(Embedder(minilm_path, device="cpu").encode_queries(held_out))
    ).sum(1)
    assert float(cosines.min()) == pytest.approx(figure, abs=1e-5)


def test_openvino_int8_without_its_graph_says_how_to_make_one(calibrated: tuple) -> None:
    pytest.importorskip("openvino")
    out, _ = calibrated  # an ONNX Runtime calibration: no OpenVINO graph in it
    with pytest.raises(ConfigError, match="bgekit quantize --backend openvino"):
        Embedder(out, device="cpu", backend="openvino", quantization="int8-static").encode(["a text"])


def test_auto_measures_the_calibrated_graph_beside_the_other_paths(
    calibrated_openvino: tuple, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    out, _ = calibrated_openvino
    model = Embedder(out, device="cpu", backend="auto", dtype="auto")
    choice = model.auto_choice
    assert choice is not None
    int8 = [name for name in choice.rates if name.endswith("/int8-static")]
    assert int8 and all(name.startswith("openvino/") for name in int8)  # only the graph the folder holds
    assert {"torch/fp32", "onnx/fp32", "openvino/fp32"} <= set(choice.rates)
    qualifying = [n for n in choice.rates if choice.cosines[n] >= 0.995]
    best = max(qualifying, key=lambda n: (choice.scores[n], choice.rates[n]))
    parts = best.split("/")
    assert (choice.backend, choice.dtype, choice.quantization) == (
        *parts[:2],
        parts[2] if len(parts) > 2 else None,
    )
    assert (model.backend, model.dtype, model.quantization) == (
        choice.backend,
        choice.dtype,
        choice.quantization,
    )
    assert model.encode(["a text"]).shape == (1, 384)


def test_auto_measures_again_when_the_graph_is_calibrated_again(
    calibrated_openvino: tuple, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgekit.inference import autotune

    monkeypatch.setenv("BGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    measured: list[tuple] = []

    def fake(build, run, path):  # type: ignore[no-untyped-def]
        measured.append(path)
        return {"queries": 100.0, "passages": 10.0}, np.eye(104, 8, dtype=np.float32) + 1.0

    monkeypatch.setattr(autotune, "ISOLATE", False)  # the fake measures in this process
    monkeypatch.setattr(autotune, "measure", fake)
    out, _ = calibrated_openvino
    first = Embedder(out, device="cpu", backend="auto").auto_choice
    assert first is not None and not first.cached and measured
    assert Embedder(out, device="cpu", backend="auto").auto_choice.cached  # type: ignore[union-attr]
    (graph,) = [p for p in (Path(out) / "onnx").glob("*-int8-static-openvino-v*.bin")]
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # written again
    again = Embedder(out, device="cpu", backend="auto").auto_choice
    assert again is not None and not again.cached
