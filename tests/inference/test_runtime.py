"""Runtime arguments shared by Embedder and Reranker: validation, defaults, and the dtype that really runs."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import Embedder, Reranker
from bgekit.errors import ConfigError, InputError, ModelLoadError
from bgekit.inference.runtime import resolve_runtime


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "devices": ["cpu"]}, "give either device= or devices=, not both"),
        ({"devices": []}, r"devices=\[\] is empty"),
        ({"device": "cpu", "quantization": "int4"}, "quantization='int4' is not valid"),
        ({"device": "cpu", "backend": "tensorrt"}, "backend='tensorrt' is not valid"),
        ({"device": "cpu", "quantization": "int8", "backend": "torch"}, "runs on backend='onnx'"),
        ({"device": "nowhere:7"}, "device='nowhere:7' is not a valid torch device"),
    ],
)
def test_bad_runtime_arguments_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_runtime(kwargs, "fp32", 16384)


def test_runtime_defaults() -> None:
    runtime = resolve_runtime({"devices": "cpu", "quantization": "int8"}, "fp32", 16384)
    assert runtime.devices == ["cpu"] and runtime.device == torch.device("cpu")
    assert (runtime.backend, runtime.quantization, runtime.dtype) == ("onnx", "int8", "fp32")
    uncapped = resolve_runtime({"device": "cpu", "max_tokens_per_batch": None}, "fp32", 1)
    assert uncapped.max_tokens_per_batch is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bf16 warns on CPUs that emulate it
        checkpoint_default = resolve_runtime({"device": "cpu"}, "bf16", 1)
    assert checkpoint_default.torch_dtype is torch.bfloat16


def test_fp16_on_cpu_reports_the_fp32_it_runs() -> None:
    with pytest.warns(UserWarning, match="fp16 is slow or unsupported on CPU"):
        runtime = resolve_runtime({"device": "cpu", "dtype": "float16"}, "fp32", 16384)
    assert (runtime.dtype, runtime.torch_dtype, runtime.requested_dtype) == ("fp32", torch.float32, "float16")


def test_embedder_and_reranker_report_the_dtype_that_runs(minilm_path: str, bert_reranker_dir: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        embedder = Embedder(minilm_path, device="cpu", dtype="fp16")
        reranker = Reranker(bert_reranker_dir, device="cpu", dtype="fp16")
    for model, backbone in ((embedder, embedder.model), (reranker, reranker.model)):
        assert model.dtype == "fp32" and "dtype='fp32'" in repr(model)
        assert next(backbone.parameters()).dtype is torch.float32


def test_workers_resolve_the_requested_dtype_for_their_own_device(
    minilm_path: str, bert_reranker_dir: str
) -> None:
    embedder = Embedder(minilm_path, devices=["cpu", "cpu"], dtype="auto")
    reranker = Reranker(bert_reranker_dir, devices=["cpu", "cpu"])
    assert embedder._worker_kwargs()["dtype"] == "auto"
    assert reranker._worker_kwargs()["dtype"] is None  # each worker falls back to the checkpoint's default


def test_a_worker_that_cannot_load_the_model_reports_why(tmp_path: Path, tiny_bert_dir: str) -> None:
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "broken"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # a copy cut short
    with (
        Embedder(str(broken), devices=["cpu", "cpu"], worker_timeout=300) as model,
        pytest.raises(ModelLoadError, match=r"could not load model weights from .*broken.*deserializing"),
    ):
        model.encode_corpus(["first text", "second text"])


def test_worker_timeout_is_checked_and_reaches_the_pool(tiny_bert_dir: str, bert_reranker_dir: str) -> None:
    with pytest.raises(ConfigError, match="worker_timeout=0 is not valid"):
        Embedder(tiny_bert_dir, devices=["cpu", "cpu"], worker_timeout=0)
    embedder = Embedder(tiny_bert_dir, devices=["cpu", "cpu"], worker_timeout=30)
    reranker = Reranker(bert_reranker_dir, devices=["cpu", "cpu"], worker_timeout=30)
    try:
        assert embedder._get_pool().timeout == reranker._get_pool().timeout == 30
    finally:
        embedder.close()
        reranker.close()


def test_the_onnx_graph_is_exported_once_before_the_workers_start(
    tmp_path: Path, tiny_bert_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from bgekit.inference import onnx_backend

    folder = str(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    exports: list[tuple[str, int, int]] = []
    real_export = onnx_backend.export_onnx

    def counted_export(*args: object, **kwargs: object) -> str:
        path = real_export(*args, **kwargs)  # type: ignore[arg-type]
        exports.append((path, os.stat(path).st_ino, os.stat(path).st_mtime_ns))
        return path

    monkeypatch.setattr(onnx_backend, "export_onnx", counted_export)
    texts = ["a first text", "a second, longer text", "third"]
    with Embedder(folder, devices=["cpu", "cpu"], backend="onnx") as model:
        pooled = model.encode_corpus(texts)
    assert len(exports) == 1  # in this process, before spawning
    path, inode, mtime = exports[0]
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (inode, mtime)  # no worker wrote it again
    assert len(list((Path(folder) / "onnx").glob("*.onnx"))) == 1
    single = Embedder(folder, device="cpu", backend="onnx").encode_corpus(texts)
    np.testing.assert_allclose(pooled, single, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_config_error(tiny_bert_dir: str, bert_reranker_dir: str) -> None:
    with pytest.raises(
        ConfigError, match=r"devices\[0\]='cuda:0' asks for CUDA, but this machine has no CUDA"
    ):
        Embedder(tiny_bert_dir, devices=["cuda:0"])
    with pytest.raises(ConfigError, match=r"device='cuda' asks for CUDA"):
        Reranker(bert_reranker_dir, device="cuda")


def test_batch_size_zero_is_a_config_error(tiny_bert_dir: str, bert_reranker_dir: str) -> None:
    with pytest.raises(ConfigError, match="batch_size=0 is not valid"):
        Embedder(tiny_bert_dir, device="cpu", batch_size=0)
    with pytest.raises(ConfigError, match="batch_size=0 is not valid"):
        Reranker(bert_reranker_dir, device="cpu", batch_size=0)
    embedder = Embedder(tiny_bert_dir, device="cpu")
    with pytest.raises(ConfigError, match="batch_size=0 is not valid"):
        embedder.encode_corpus(["a text"], batch_size=0)
    with pytest.raises(ConfigError, match=r"batch_size=-2 is not valid"):
        Reranker(bert_reranker_dir, device="cpu").compute_score([("q", "p")], batch_size=-2)


def test_a_lone_surrogate_is_an_input_error_naming_the_position(
    tiny_bert_dir: str, bert_reranker_dir: str
) -> None:
    embedder = Embedder(tiny_bert_dir, device="cpu")
    with pytest.raises(
        InputError, match=r"queries\[1\] is not valid Unicode: a lone surrogate '\\ud800' at character 1"
    ):
        embedder.encode_queries(["fine", "a\ud800b"])
    with pytest.raises(InputError, match=r"corpus\[0\]\['text'\] is not valid Unicode"):
        embedder.encode_corpus([{"title": "t", "text": "bad \udc80 bytes"}])
    with pytest.raises(InputError, match=r"pairs\[1\]\[1\] is not valid Unicode"):
        Reranker(bert_reranker_dir, device="cpu").compute_score([("q", "fine"), ("q", "a\ud800b")])
    assert embedder.encode_queries(["héllo wörld 🐼"]).shape[0] == 1  # valid non-ASCII text is fine
