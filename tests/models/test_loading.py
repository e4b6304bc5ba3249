"""dtype resolution: fp16 on CPU falls back to fp32, bf16 warns where slower, "auto" follows the measured speed."""

from __future__ import annotations

import warnings

import pytest
import torch

from bgekit.errors import ConfigError
from bgekit.models import loading


def test_fp16_on_cpu_falls_back_to_fp32() -> None:
    with pytest.warns(UserWarning, match="fp16 is slow or unsupported on CPU"):
        assert loading.resolve_torch_dtype("fp16", torch.device("cpu")) is torch.float32


@pytest.mark.parametrize(("speedup", "warns"), [(3.5, False), (1.0, False), (0.4, True)])
def test_bf16_on_cpu_warns_only_where_it_is_slower(
    monkeypatch: pytest.MonkeyPatch, speedup: float, warns: bool
) -> None:
    monkeypatch.setattr(loading, "cpu_bf16_speedup", lambda: speedup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loading.resolve_torch_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert any("fp32 is likely faster here" in str(w.message) for w in caught) is warns


def test_bf16_speedup_is_measured_once() -> None:
    loading.cpu_bf16_speedup.cache_clear()
    first = loading.cpu_bf16_speedup()
    assert first > 0 and loading.cpu_bf16_speedup() == first


@pytest.mark.parametrize(("speedup", "expected"), [(3.5, "bf16"), (1.19, "fp32"), (0.36, "fp32")])
def test_auto_dtype_on_cpu_follows_the_measured_bf16_speed(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: str
) -> None:
    monkeypatch.setattr(loading, "cpu_bf16_speedup", lambda: speedup)
    assert loading.choose_dtype("auto", torch.device("cpu")) == expected
    assert loading.choose_dtype("fp32", torch.device("cpu")) == "fp32"  # an explicit choice is kept


def test_onnx_backend_accepts_only_fp32_or_auto() -> None:
    cpu = torch.device("cpu")
    assert loading.choose_dtype("auto", cpu, backend="onnx") == "fp32"
    assert loading.choose_dtype(None, cpu, backend="onnx") == "fp32"
    with pytest.raises(ConfigError, match="dtype='bf16' needs backend='torch'"):
        loading.choose_dtype("bfloat16", cpu, backend="onnx")


def test_embedder_resolves_auto_to_what_it_runs(monkeypatch: pytest.MonkeyPatch, minilm_path: str) -> None:
    from bgekit import Embedder

    for speedup, expected, torch_dtype in ((3.0, "bf16", torch.bfloat16), (0.4, "fp32", torch.float32)):
        monkeypatch.setattr(loading, "cpu_bf16_speedup", lambda s=speedup: s)
        model = Embedder(minilm_path, device="cpu", dtype="auto")
        assert model.dtype == expected
        assert next(model.model.parameters()).dtype is torch_dtype
        assert f"dtype={expected!r}" in repr(model)
    with pytest.raises(ConfigError, match="needs backend='torch'"):
        Embedder(minilm_path, device="cpu", dtype="bf16", backend="onnx")
