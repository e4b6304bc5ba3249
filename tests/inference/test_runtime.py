"""Runtime arguments shared by Embedder and Reranker: validation, defaults, and the dtype that really runs."""

from __future__ import annotations

import warnings

import pytest
import torch

from bgekit import Embedder, Reranker
from bgekit.errors import ConfigError
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
