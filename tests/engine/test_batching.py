"""The batching engine: input order, token budget, out-of-memory back-off, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bgekit.engine import BatchEngine, is_out_of_memory, pad_sequences
from bgekit.engine.batching import plan_batches


@given(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=200), st.integers(1, 64))
@settings(max_examples=60, deadline=None)
def test_outputs_come_back_in_input_order_and_budget_holds(lengths: list[int], batch_size: int) -> None:
    budget = 1024
    seen_batches: list[list[int]] = []

    def step(indices: list[int]) -> torch.Tensor:
        seen_batches.append(indices)
        return torch.tensor([[i, lengths[i]] for i in indices])

    out = BatchEngine(batch_size=batch_size, max_tokens_per_batch=budget).run(lengths, step)
    assert out[:, 0].tolist() == list(range(len(lengths)))
    assert sorted(i for b in seen_batches for i in b) == list(range(len(lengths)))
    for batch in seen_batches:
        assert len(batch) <= batch_size
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= budget or len(batch) == 1  # a single over-long input still runs


def plan_cost(
    lengths: list[int],
    ends: list[int],
    overhead: int,
    packed: float | None = None,
    packed_max_length: int | None = None,
) -> float:
    """Padded tokens (or, with ``packed``, at most real tokens times it for a batch whose longest input has
    at most ``packed_max_length`` tokens) plus ``overhead`` per batch."""
    cost = 0.0
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        work = float((end - start) * max(1, lengths[start]))
        if packed is not None and (packed_max_length is None or lengths[start] <= packed_max_length):
            work = min(work, packed * sum(max(1, n) for n in lengths[start:end]))
        cost += work + overhead
    return cost


@given(
    st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=9),
    st.integers(1, 5),
    st.sampled_from([None, 1.1]),
    st.sampled_from([None, 40]),
)
@settings(max_examples=80, deadline=None)
def test_planned_batches_are_the_cheapest_split(
    lengths: list[int], batch_size: int, packed: float | None, packed_max_length: int | None
) -> None:
    """The planner's split costs no more than any other split that keeps the limits (brute force), with
    padded batches or with a runner that packs short texts into shared rows (up to a longest length)."""
    lengths = sorted(lengths, reverse=True)
    budget, overhead = 120, 16
    ends = plan_batches(lengths, batch_size, budget, overhead, packed, packed_max_length)
    n = len(lengths)

    def allowed(ends: list[int]) -> bool:
        starts = [0, *ends[:-1]]
        return all(
            e - s <= batch_size and ((e - s) * lengths[s] <= budget or e - s == 1)
            for s, e in zip(starts, ends, strict=True)
        )

    assert ends[-1] == n and allowed(ends)
    best = min(
        plan_cost(
            lengths, [i + 1 for i in range(n - 1) if mask >> i & 1] + [n], overhead, packed, packed_max_length
        )
        for mask in range(2 ** (n - 1))
        if allowed([i + 1 for i in range(n - 1) if mask >> i & 1] + [n])
    )
    assert plan_cost(lengths, ends, overhead, packed, packed_max_length) == pytest.approx(best)


@given(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=200), st.integers(1, 64))
@settings(max_examples=40, deadline=None)
def test_planned_batches_keep_order_and_limits(lengths: list[int], batch_size: int) -> None:
    batches: list[list[int]] = []

    def step(indices: list[int]) -> torch.Tensor:
        batches.append(indices)
        return torch.tensor(indices)

    engine = BatchEngine(batch_size=batch_size, max_tokens_per_batch=1024, overhead_tokens=32)
    assert engine.run(lengths, step).tolist() == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= batch_size
        assert max(lengths[i] for i in batch) * len(batch) <= 1024 or len(batch) == 1


def test_a_mixed_group_is_split_where_the_lengths_drop() -> None:
    """Many short queries gathered with a few long ones are not all padded to the longest."""
    lengths = [60, 58, *[12] * 30]
    batches: list[list[int]] = []
    BatchEngine(batch_size=256, max_tokens_per_batch=4096, overhead_tokens=32).run(
        lengths, lambda idx: batches.append(idx) or [0] * len(idx)
    )
    assert [sorted(b) for b in batches] == [[0, 1], list(range(2, 32))]
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded == 2 * 60 + 30 * 12  # against 32 * 60 = 1,920 in one batch


def test_a_mixed_group_runs_as_one_batch_when_the_model_packs_rows() -> None:
    """A runner that packs short texts into shared rows pays for real tokens, not padding: 36 queries of
    36 lengths (a server's group) run as one batch instead of several padded ones."""
    lengths = list(range(10, 46))
    runs: dict[float | None, list[list[int]]] = {None: [], 1.1: []}
    for packed, batches in runs.items():
        engine = BatchEngine(
            batch_size=256, max_tokens_per_batch=4096, overhead_tokens=32, packed_token_cost=packed
        )
        engine.run(lengths, lambda idx, seen=batches: seen.append(idx) or [0] * len(idx))
    assert [sorted(b) for b in runs[1.1]] == [list(range(36))]
    assert len(runs[None]) > 1
    batches = []  # a packed batch holds no text longer than the runner's packed_max_length
    BatchEngine(
        batch_size=256,
        max_tokens_per_batch=4096,
        overhead_tokens=32,
        packed_token_cost=1.1,
        packed_max_length=30,
    ).run(lengths, lambda idx: batches.append(idx) or [0] * len(idx))
    assert len(batches) > 1 and [sorted(b) for b in batches][-1] == list(range(21))  # lengths 10-30


def test_out_of_memory_back_off_works_with_planned_batches() -> None:
    lengths = [10] * 40
    tried: list[int] = []

    def step(indices: list[int]) -> list[int]:
        tried.append(len(indices))
        if len(indices) > 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(indices)

    engine = BatchEngine(batch_size=64, overhead_tokens=32)
    assert engine.run(lengths, step) == list(range(40))
    assert tried[0] == 40  # the planned batch first, then the back-off's smaller ones
    assert engine.backoffs >= 1 and sum(t for t in tried if t <= 8) == 40


def test_batches_are_length_sorted_longest_first() -> None:
    lengths = [5, 50, 7, 500, 1]
    batches: list[list[int]] = []
    BatchEngine(batch_size=2).run(lengths, lambda idx: batches.append(idx) or [0] * len(idx))
    assert batches == [[3, 1], [2, 0], [4]]


def test_lists_dicts_and_arrays_are_reassembled() -> None:
    lengths = [3, 9, 1, 4]
    out = BatchEngine(batch_size=3).run(
        lengths,
        lambda idx: {"vec": np.array([[i] for i in idx]), "tokens": [list(range(i)) for i in idx]},
    )
    assert out["vec"][:, 0].tolist() == [0, 1, 2, 3]
    assert out["tokens"] == [[], [0], [0, 1], [0, 1, 2]]


def test_out_of_memory_backs_off_then_grows_back() -> None:
    calls: list[int] = []

    def step(indices: list[int]) -> list[int]:
        calls.append(len(indices))
        if len(indices) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(indices)

    engine = BatchEngine(batch_size=32, grow_after=2)
    out = engine.run([10] * 100, step)
    assert out == list(range(100))
    assert calls[:3] == [32, 16, 8]  # halves until it fits
    first_fit = calls.index(8)
    assert any(c > 8 for c in calls[first_fit:])  # then tries to grow back
    assert engine.backoffs == sum(c > 8 for c in calls)


def test_other_errors_are_never_retried() -> None:
    calls: list[int] = []

    def step(indices: list[int]) -> list[int]:
        calls.append(len(indices))
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        BatchEngine(batch_size=16).run([3] * 40, step)
    assert calls == [16]


def test_out_of_memory_at_the_floor_is_raised() -> None:
    def step(indices: list[int]) -> list[int]:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    with pytest.raises(RuntimeError, match="allocate"):
        BatchEngine(batch_size=4, min_batch_size=1).run([3] * 5, step)


def test_is_out_of_memory_classifies() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(KeyError("input_ids"))


def test_empty_input_runs_nothing() -> None:
    assert BatchEngine().run([], lambda idx: pytest.fail("called")) == []


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_sequences(side: str) -> None:
    batch = pad_sequences(
        [{"input_ids": [5, 6, 7], "token_type_ids": [0, 1, 1]}, {"input_ids": [8], "token_type_ids": [0]}],
        pad_token_id=0,
        padding_side=side,
    )
    if side == "right":
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    else:
        assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["token_type_ids"].shape == (2, 3)


def test_token_budget_defaults_by_device_and_respects_what_is_given() -> None:
    from bgekit.engine import CPU_MAX_TOKENS_PER_BATCH, default_token_budget

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert default_token_budget({}, cpu, 16384) == CPU_MAX_TOKENS_PER_BATCH == 4096
    assert default_token_budget({}, gpu, 16384) == 16384
    assert default_token_budget({"max_tokens_per_batch": "2048"}, cpu, 16384) == 2048
    assert default_token_budget({"max_tokens_per_batch": None}, gpu, 16384) is None


def test_non_finite_outputs_name_their_input_positions() -> None:
    from bgekit.errors import NonFiniteOutputError

    def step(indices: list[int]) -> dict:
        vecs = np.array([[np.inf if i == 3 else 0.0] for i in indices])
        sparse = [(np.array([1]), np.array([np.nan if i == 0 else 1.0], np.float32)) for i in indices]
        return {"dense": vecs, "sparse": sparse}

    engine = BatchEngine(batch_size=8, position_offset=100)
    with pytest.raises(NonFiniteOutputError, match=r"position\(s\) \[100, 103\]") as info:
        engine.run([1, 1, 1, 1], step)
    assert info.value.positions == [100, 103]
