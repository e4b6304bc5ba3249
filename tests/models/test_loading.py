"""dtype resolution on CPU: fp16 falls back to fp32, bf16 warns where the CPU runs it slower than fp32."""

from __future__ import annotations

import warnings

import pytest
import torch

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
