"""Reranker losses against their formulas written out by hand (property tests on small tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bgekit.errors import ConfigError
from bgekit.finetune.reranker_losses import (
    group_scores,
    grouped_cross_entropy,
    layerwise_loss,
    reranker_loss,
    soft_label_distillation,
)

floats = st.floats(min_value=-20, max_value=20, allow_nan=False, width=32)


@st.composite
def grouped(draw: st.DrawFn, n_tensors: int = 1) -> list[list[list[float]]]:
    b = draw(st.integers(1, 4))
    g = draw(st.integers(1, 5))
    return [[[draw(floats) for _ in range(g)] for _ in range(b)] for _ in range(n_tensors)]


def _ce_by_hand(s: list[list[float]]) -> float:
    return sum(-(row[0] - math.log(sum(math.exp(x) for x in row))) for row in s) / len(s)


def _kd_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    total = 0.0
    for srow, trow in zip(s, t, strict=True):
        zt = sum(math.exp(x) for x in trow)
        zs = math.log(sum(math.exp(x) for x in srow))
        total += -sum(math.exp(tj) / zt * (sj - zs) for sj, tj in zip(srow, trow, strict=True))
    return total / len(s)


@settings(max_examples=60, deadline=None)
@given(grouped())
def test_grouped_cross_entropy_matches_formula(data: list[list[list[float]]]) -> None:
    (s,) = data
    got = float(grouped_cross_entropy(torch.tensor(s, dtype=torch.float64)))
    assert got == pytest.approx(_ce_by_hand(s), rel=1e-5, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(grouped(2))
def test_soft_label_distillation_matches_formula(data: list[list[list[float]]]) -> None:
    s, t = data
    got = float(
        soft_label_distillation(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))
    )
    assert got == pytest.approx(_kd_by_hand(s, t), rel=1e-4, abs=1e-4)
    total = float(reranker_loss(torch.tensor(s), torch.tensor(t), kd_weight=0.5))
    assert total == pytest.approx(_ce_by_hand(s) + 0.5 * _kd_by_hand(s, t), rel=1e-4, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(grouped(3))
def test_layerwise_loss_matches_formula(data: list[list[list[float]]]) -> None:
    l1, l2, t = data
    layers = [torch.tensor(l1), torch.tensor(l2)]
    plain = _ce_by_hand(l1) + _ce_by_hand(l2)
    assert float(layerwise_loss(layers, distill_from_last=False)) == pytest.approx(plain, rel=1e-4, abs=1e-4)
    from_last = plain + _kd_by_hand(l1, l2)
    assert float(layerwise_loss(torch.stack(layers))) == pytest.approx(from_last, rel=1e-4, abs=1e-4)
    teacher = plain + _kd_by_hand(l1, t) + _kd_by_hand(l2, t)
    assert float(layerwise_loss(layers, torch.tensor(t))) == pytest.approx(teacher, rel=1e-4, abs=1e-4)


def test_gradients_flow_to_student_only() -> None:
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    reranker_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    deep = torch.randn(3, 4, requires_grad=True)
    shallow = torch.randn(3, 4, requires_grad=True)
    layerwise_loss([shallow, deep]).backward()
    # the deepest layer gets only its own cross-entropy gradient, which sums to zero per row
    assert torch.allclose(deep.grad.sum(dim=1), torch.zeros(3), atol=1e-6)
    assert shallow.grad is not None


def test_matches_flagembedding_reference() -> None:
    # AbsRerankerModel.forward: cross_entropy(grouped, 0) - mean(sum(log_softmax(grouped) * softmax(teacher)))
    torch.manual_seed(0)
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    reference = torch.nn.functional.cross_entropy(s, torch.zeros(4, dtype=torch.long)) - torch.mean(
        torch.sum(torch.log_softmax(s, dim=-1) * torch.softmax(t, dim=-1), dim=-1)
    )
    torch.testing.assert_close(reranker_loss(s, t), reference)


def test_shape_errors() -> None:
    with pytest.raises(ConfigError, match="cannot be cut into groups of 4"):
        group_scores(torch.zeros(6), 4)
    with pytest.raises(ConfigError, match=r"shape \(queries, group size\)"):
        grouped_cross_entropy(torch.zeros(4))
    with pytest.raises(ConfigError, match="teacher scores have shape"):
        soft_label_distillation(torch.zeros(2, 3), torch.zeros(2, 4))
