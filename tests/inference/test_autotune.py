"""backend="auto": measured candidates, the fastest full-quality one chosen, cached per machine and model."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder, Reranker
from bgekit.errors import ConfigError
from bgekit.inference import autotune


def assert_same_or_full_quality(got: np.ndarray, want: np.ndarray, quantization: str | None) -> None:
    """An unquantised choice gives fp32's numbers; an int8 one that qualified keeps cosine >= MIN_COSINE."""
    if quantization is None:
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:
        assert float((got * want).sum(1).min()) >= autotune.MIN_COSINE


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "auto"


@pytest.fixture
def model_dir(tmp_path: Path, tiny_bert_dir: str) -> str:
    folder = tmp_path / "model"  # a copy: the ONNX candidate writes its graph beside the weights
    shutil.copytree(tiny_bert_dir, folder)
    return str(folder)


def test_auto_measures_candidates_chooses_the_fastest_and_caches_it(cache: Path, model_dir: str) -> None:
    model = Embedder(model_dir, device="cpu", backend="auto")
    choice = model.auto_choice
    assert choice is not None and not choice.cached
    # openvino and nncf are installed here: OpenVINO fp32 and its dynamic int8 are candidates too
    assert set(choice.rates) == {"torch/fp32", "onnx/fp32", "openvino/fp32", "openvino/fp32/int8"}
    assert all(rate > 0 for rate in choice.rates.values())
    assert set(choice.sample_rates) == {"queries", "passages"}
    assert all(set(rates) == set(choice.rates) for rates in choice.sample_rates.values())
    assert max(choice.scores.values()) <= 1.0
    for other in ("onnx/fp32", "openvino/fp32"):
        assert choice.cosines[other] >= 0.99999  # the same fp32 model on another runtime
    qualifying = [name for name, cosine in choice.cosines.items() if cosine >= autotune.MIN_COSINE]
    fastest = max(qualifying, key=lambda n: (choice.scores[n], choice.rates[n]))
    chosen = (model.backend, model.dtype, model.quantization)
    assert chosen == (choice.backend, choice.dtype, choice.quantization)
    assert "/".join(part for part in chosen if part) == fastest
    assert choice.reason.startswith(f"{fastest} at ")
    saved = json.loads(Path(choice.cache_path).read_text())
    assert Path(choice.cache_path).parent == cache
    assert (saved["backend"], saved["dtype"], saved["rates"]) == (choice.backend, choice.dtype, choice.rates)

    texts = ["a short query", "a longer passage about retrieval and the vectors that serve it " * 5]
    want = Embedder(model_dir, device="cpu", backend="torch").encode_corpus(texts)
    assert_same_or_full_quality(model.encode_corpus(texts), want, model.quantization)


def test_a_cached_choice_is_read_not_measured(
    cache: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Embedder(model_dir, device="cpu", backend="auto").auto_choice
    assert first is not None

    def no_measuring(*args: object) -> None:
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(autotune, "measure", no_measuring)
    again = Embedder(model_dir, device="cpu", backend="auto").auto_choice
    assert again is not None and again.cached
    assert (again.backend, again.dtype, again.rates) == (first.backend, first.dtype, first.rates)


def test_the_fastest_candidate_below_full_quality_is_not_chosen(
    cache: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(build, run, path):  # type: ignore[no-untyped-def]
        outputs = np.eye(104, 8, dtype=np.float32) + 1.0
        if path == ("onnx", "fp32"):  # faster, but its outputs drift
            outputs = outputs + np.random.default_rng(0).normal(0, 1, outputs.shape).astype(np.float32)
            return {"queries": 500.0, "passages": 50.0}, outputs
        return {"queries": 100.0, "passages": 10.0}, outputs

    monkeypatch.setattr(autotune, "ISOLATE", False)  # the fake measures in this process
    monkeypatch.setattr(autotune, "measure", fake)
    model = Embedder(model_dir, device="cpu", backend="auto")
    assert model.auto_choice is not None
    assert model.auto_choice.cosines["onnx/fp32"] < autotune.MIN_COSINE
    assert (model.backend, model.dtype) == ("torch", "fp32")


def test_the_path_closest_to_the_best_on_both_samples_is_chosen(
    cache: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # queries/s, passages/s: ONNX wins on passages but runs queries at 0.6 of the best; OpenVINO fp32 is
    # within 5% of the best on both, so it is chosen though it is fastest on neither
    rates = {
        ("torch", "fp32"): (100.0, 10.0),
        ("onnx", "fp32"): (60.0, 12.0),
        ("openvino", "fp32"): (95.0, 11.5),
        ("openvino", "fp32", "int8"): (90.0, 9.0),
    }

    def fake(build, run, path):  # type: ignore[no-untyped-def]
        queries, passages = rates[path]
        return {"queries": queries, "passages": passages}, np.eye(104, 8, dtype=np.float32) + 1.0

    monkeypatch.setattr(autotune, "ISOLATE", False)  # the fake measures in this process
    monkeypatch.setattr(autotune, "measure", fake)
    choice = Embedder(model_dir, device="cpu", backend="auto").auto_choice
    assert choice is not None
    assert choice.scores == {
        "torch/fp32": 0.8333,
        "onnx/fp32": 0.6,
        "openvino/fp32": 0.95,
        "openvino/fp32/int8": 0.75,
    }
    assert (choice.backend, choice.dtype, choice.quantization) == ("openvino", "fp32", None)
    assert choice.reason.startswith("openvino/fp32 at 95.0 queries/s, 11.5 passages/s (score 0.95); ")


def test_each_timed_pass_meets_new_batch_shapes() -> None:
    seen: list[tuple[int, ...]] = []

    def run(model: object, texts: list[str]) -> np.ndarray:
        seen.append(tuple(len(text.split()) for text in texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    rates, outputs = autotune.measure(lambda *path: None, run, ("torch", "fp32"))
    assert set(rates) == {"queries", "passages"} and all(rate > 0 for rate in rates.values())
    assert len(seen) == 1 + 2 * autotune.PASSES  # a warm-up, then each sample's passes
    assert len(set(seen)) == len(seen)  # no pass repeats the lengths of one before it
    assert outputs.shape == (sum(count for _, count in autotune.SAMPLES.values()), 4)


def _pid_model(folder: str, backend: str, dtype: str, quantization: str | None = None) -> str:
    return folder


def _pid_outputs(folder: str, texts: list[str]) -> np.ndarray:
    Path(folder, "pid").write_text(str(os.getpid()))
    return np.ones((len(texts), 4), dtype=np.float32)


def test_candidates_are_measured_in_a_child_process(cache: Path, tmp_path: Path) -> None:
    paths = [("torch", "fp32"), ("onnx", "fp32")]
    build = functools.partial(_pid_model, str(tmp_path))
    choice = autotune.choose({"model": "pid"}, paths, build, _pid_outputs)  # the model is the folder
    assert int((tmp_path / "pid").read_text()) != os.getpid()  # a child process ran them
    assert set(choice.rates) == {"torch/fp32", "onnx/fp32"} and choice.cache_path
    # what cannot be sent to a child (a lambda) is measured here
    autotune.choose({"model": "here"}, paths, lambda *path: str(tmp_path), _pid_outputs)
    assert int((tmp_path / "pid").read_text()) == os.getpid()


def _failing_model(backend: str, dtype: str, quantization: str | None = None) -> None:
    raise ConfigError(f"no {backend} here")


def test_an_error_in_the_child_is_raised_here_as_itself(cache: Path) -> None:
    paths = [("torch", "fp32"), ("onnx", "fp32")]
    with pytest.raises(ConfigError, match="no torch here"):
        autotune.choose({"model": "failing"}, paths, _failing_model, _pid_outputs)


def test_a_model_the_child_cannot_import_is_measured_here(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    module = types.ModuleType("bgekit_test_only_here")  # importable in this process only, like a __main__
    exec(f"def build(*path):\n    return {str(tmp_path)!r}\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    choice = autotune.choose(
        {"model": "here-only"},
        [("torch", "fp32"), ("onnx", "fp32")],
        module.build,
        _pid_outputs,
    )
    assert int((tmp_path / "pid").read_text()) == os.getpid() and set(choice.rates) == {
        "torch/fp32",
        "onnx/fp32",
    }


def test_a_damaged_cache_is_measured_again(cache: Path, model_dir: str) -> None:
    first = Embedder(model_dir, device="cpu", backend="auto").auto_choice
    assert first is not None
    Path(first.cache_path).write_text("{not json")
    again = Embedder(model_dir, device="cpu", backend="auto").auto_choice
    assert again is not None and not again.cached and again.rates
    assert json.loads(Path(again.cache_path).read_text())["backend"] == again.backend


def test_dtype_auto_adds_bf16_only_where_the_cpu_runs_it_fast() -> None:
    assert autotune.candidates("fp32", "auto", bf16_fast=True) == [
        ("torch", "fp32"),
        ("torch", "bf16"),
        ("onnx", "fp32"),
    ]
    assert autotune.candidates("fp32", "auto", bf16_fast=False) == [("torch", "fp32"), ("onnx", "fp32")]
    assert autotune.candidates("bf16", None, bf16_fast=True) == [("torch", "bf16")]
    assert autotune.candidates("bf16", None, bf16_fast=True, openvino=True) == [
        ("torch", "bf16"),
        ("openvino", "bf16"),
    ]
    assert autotune.candidates("bf16", None, bf16_fast=True, openvino=True, openvino_int8=True)[-1] == (
        "openvino",
        "bf16",
        "int8",
    )


def test_auto_with_int8_or_an_explicit_backend_measures_nothing(
    cache: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autotune, "choose", lambda *a: pytest.fail("measured"))
    model = Embedder(model_dir, device="cpu", backend="auto", quantization="int8")
    assert (model.backend, model.auto_choice) == ("onnx", None)
    with pytest.raises(ConfigError, match="'torch', 'onnx', 'openvino' or 'auto'"):
        Embedder(model_dir, device="cpu", backend="tensorrt")


def test_reranker_auto(cache: Path, tmp_path: Path, bert_reranker_dir: str) -> None:
    folder = tmp_path / "reranker"
    shutil.copytree(bert_reranker_dir, folder)
    model = Reranker(str(folder), device="cpu", backend="auto")
    assert model.auto_choice is not None
    assert set(model.auto_choice.rates) == {"torch/fp32", "onnx/fp32", "openvino/fp32", "openvino/fp32/int8"}
    pairs = [("what is bge?", "BGE is an embedding model."), ("what is bge?", "Pandas eat bamboo.")]
    want = Reranker(str(folder), device="cpu").compute_score(pairs)
    got = model.compute_score(pairs)
    if model.quantization is None:
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:  # int8 qualified on the sample: the same order here
        assert list(np.argsort(got)) == list(np.argsort(want))


def test_serve_backend_auto_reports_what_it_runs(cache: Path, model_dir: str) -> None:
    import argparse

    from fastapi.testclient import TestClient

    from bgekit.cli.serve import add_arguments, build_app

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args(["--model", model_dir, "--backend", "auto"]))
    choice = app.state.embedder.auto_choice
    assert choice is not None and choice.rates
    with TestClient(app, base_url="http://localhost") as client:
        info = client.get("/info").json()["model"]
        assert (info["backend"], info["dtype"], info["quantization"]) == (
            choice.backend,
            choice.dtype,
            choice.quantization,
        )
        vectors = np.asarray(client.post("/embed", json={"inputs": ["a short query"]}).json())
    want = Embedder(model_dir, device="cpu").encode_corpus(["a short query"])
    assert_same_or_full_quality(vectors, want, choice.quantization)
