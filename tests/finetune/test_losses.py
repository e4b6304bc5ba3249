"""Each loss against its formula written out by hand with Python loops on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bgekit.errors import ConfigError
from bgekit.finetune import losses


def _batch(seed: int, b: int, g: int, d: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    p = F.normalize(torch.randn(b * g, d, generator=gen, dtype=torch.float64), dim=-1)
    teacher = torch.randn(b, g, generator=gen, dtype=torch.float64) * 3
    return q, p, teacher


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def hand_in_batch(q, p, tau):  # type: ignore[no-untyped-def]
    b, n = q.shape[0], p.shape[0]
    g = n // b
    total = 0.0
    for i in range(b):
        s = [_dot(q[i], p[j]) / tau for j in range(n)]
        total += -(s[i * g] - math.log(sum(math.exp(x) for x in s)))
    return total / b


def hand_own_group(q, p, tau):  # type: ignore[no-untyped-def]
    b, n = q.shape[0], p.shape[0]
    g = n // b
    total = 0.0
    for i in range(b):
        s = [_dot(q[i], p[i * g + k]) / tau for k in range(g)]
        total += -(s[0] - math.log(sum(math.exp(x) for x in s)))
    return total / b


def hand_softmax(row):  # type: ignore[no-untyped-def]
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def hand_kl_div(q, p, teacher, tau):  # type: ignore[no-untyped-def]
    b, g = teacher.shape
    total = 0.0
    for i in range(b):
        s = [_dot(q[i], p[i * g + k]) / tau for k in range(g)]
        t = hand_softmax([float(x) for x in teacher[i]])
        log_z = math.log(sum(math.exp(x) for x in s))
        total += -sum(t[k] * (s[k] - log_z) for k in range(g))
    return total / b


def hand_m3_kd(q, p, teacher, tau):  # type: ignore[no-untyped-def]
    b, g = teacher.shape
    n = p.shape[0]
    total = 0.0
    for k in range(g):
        per_k = 0.0
        for i in range(b):
            t = hand_softmax([float(x) for x in teacher[i]])
            s = [_dot(q[i], p[j]) / tau for j in range(n)]
            excluded = {i * g + m for m in range(k)}
            denom = sum(math.exp(s[j]) for j in range(n) if j not in excluded)
            per_k += t[k] * -(s[i * g + k] - math.log(denom))
        total += per_k / b
    return total


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 4),
    g=st.integers(1, 4),
    tau=st.sampled_from([0.02, 0.05, 1.0]),
)
def test_in_batch_and_own_group_infonce_match_formula(seed: int, b: int, g: int, tau: float) -> None:
    q, p, _ = _batch(seed, b, g)
    assert float(losses.in_batch_infonce(q, p, tau)) == pytest.approx(hand_in_batch(q, p, tau), rel=1e-9)
    assert float(losses.own_group_infonce(q, p, tau)) == pytest.approx(
        hand_own_group(q, p, tau), rel=1e-9, abs=1e-12
    )
    # embedder_loss dispatches to them without a teacher
    assert float(losses.embedder_loss(q, p, temperature=tau)) == pytest.approx(
        hand_in_batch(q, p, tau), rel=1e-9
    )
    assert float(losses.embedder_loss(q, p, temperature=tau, in_batch_negatives=False)) == pytest.approx(
        hand_own_group(q, p, tau), rel=1e-9, abs=1e-12
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000), b=st.integers(1, 4), g=st.integers(1, 4), tau=st.sampled_from([0.05, 1.0])
)
def test_knowledge_distillation_losses_match_formula(seed: int, b: int, g: int, tau: float) -> None:
    q, p, teacher = _batch(seed, b, g)
    kd = losses.embedder_loss(q, p, temperature=tau, teacher_scores=teacher, kd_loss_type="kl_div")
    assert float(kd) == pytest.approx(hand_kl_div(q, p, teacher, tau) + hand_in_batch(q, p, tau), rel=1e-9)
    kd_local = losses.embedder_loss(
        q, p, temperature=tau, teacher_scores=teacher, kd_loss_type="kl_div", in_batch_negatives=False
    )
    expected = hand_kl_div(q, p, teacher, tau) + hand_own_group(q, p, tau)
    assert float(kd_local) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    m3 = losses.embedder_loss(q, p, temperature=tau, teacher_scores=teacher, kd_loss_type="m3_kd_loss")
    assert float(m3) == pytest.approx(hand_m3_kd(q, p, teacher, tau), rel=1e-7)


def test_m3_kd_loss_own_group_uses_group_columns() -> None:
    q, p, teacher = _batch(3, 3, 2)
    tau = 0.1
    # own-group m3 loss equals the in-batch formula applied to each query's group alone
    expected = 0.0
    for i in range(3):
        expected += hand_m3_kd(q[i : i + 1], p[2 * i : 2 * i + 2], teacher[i : i + 1], tau) / 3
    got = losses.embedder_loss(
        q, p, temperature=tau, teacher_scores=teacher, kd_loss_type="m3_kd_loss", in_batch_negatives=False
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_matryoshka_loss_is_mean_over_truncated_normalised_dims() -> None:
    gen = torch.Generator().manual_seed(0)
    q, p = (
        torch.randn(2, 8, generator=gen, dtype=torch.float64),
        torch.randn(6, 8, generator=gen, dtype=torch.float64),
    )
    expected = 0.0
    for dim in (2, 4, 8):
        qd = q[:, :dim] / q[:, :dim].norm(dim=-1, keepdim=True)
        pd = p[:, :dim] / p[:, :dim].norm(dim=-1, keepdim=True)
        expected += hand_in_batch(qd, pd, 0.05) / 3
    got = losses.matryoshka_loss(q, p, [2, 4, 8], temperature=0.05)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match="mrl_dims"):
        losses.matryoshka_loss(q, p, [16], temperature=0.05)


def test_gather_without_process_group_is_identity_and_keeps_grad() -> None:
    t = torch.randn(3, 4, requires_grad=True)
    out = losses.gather_keep_local_grad(t)
    out.sum().backward()
    assert t.grad is not None and torch.equal(t.grad, torch.ones(3, 4))


def test_bad_shapes_are_config_errors() -> None:
    q, p, teacher = _batch(0, 2, 3)
    with pytest.raises(ConfigError, match="whole number of groups"):
        losses.embedder_loss(q, p[:5], temperature=0.1)
    with pytest.raises(ConfigError, match="teacher scores have shape"):
        losses.embedder_loss(q, p, temperature=0.1, teacher_scores=teacher[:, :2])
    with pytest.raises(ConfigError, match="kd_loss_type"):
        losses.embedder_loss(q, p, temperature=0.1, teacher_scores=teacher, kd_loss_type="mse")  # type: ignore[arg-type]
