"""The device pool: results in order, worker exceptions propagated, a dead worker reported, never a hang."""

from __future__ import annotations

import os
import time

import pytest

from bgekit.engine import DevicePool
from bgekit.engine.pool import split_evenly
from bgekit.errors import ModelLoadError, WorkerError


class Doubler:
    """A picklable factory; each worker builds one ``_Worker``."""

    def __call__(self, device: str) -> _Worker:
        return _Worker(device)


class _Worker:
    def __init__(self, device: str) -> None:
        self.device = device

    def double(self, values: list[int]) -> list[int]:
        return [v * 2 for v in values]

    def where(self) -> tuple[str, int]:
        return self.device, os.getpid()

    def fail(self) -> None:
        raise ValueError("bad row 7")

    def die(self) -> None:
        os._exit(3)

    def hang(self) -> None:
        time.sleep(3600)


class BrokenModel:
    """A factory whose model cannot load."""

    def __call__(self, device: str) -> _Worker:
        raise ModelLoadError(f"/models/x has no model.safetensors (loading on {device})")


@pytest.fixture(scope="module")
def pool() -> DevicePool:
    with DevicePool(Doubler(), ["cpu", "cpu"]) as p:
        yield p


def test_results_in_call_order(pool: DevicePool) -> None:
    chunks = [[i, i + 1] for i in range(0, 20, 2)]
    assert pool.map("double", [(c,) for c in chunks]) == [[2 * v for v in c] for c in chunks]


def test_worker_exception_propagates_with_its_type(pool: DevicePool) -> None:
    with pytest.raises(ValueError, match="bad row 7"):
        pool.map("fail", [()])
    assert pool.map("double", [([1],)]) == [[2]]  # the pool survives an ordinary exception


def test_dead_worker_raises_instead_of_hanging() -> None:
    pool = DevicePool(Doubler(), ["cpu", "cpu"])
    with pytest.raises(WorkerError, match="died"):
        pool.map("die", [(), ()])
    assert pool.closed


def test_split_evenly_covers_everything() -> None:
    assert split_evenly(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_evenly(2, 8) == [(0, 1), (1, 2)]
    assert split_evenly(0, 4) == [(0, 0)]


def test_a_worker_that_fails_while_loading_reports_the_cause() -> None:
    pool = DevicePool(BrokenModel(), ["cpu", "cpu"])
    with pytest.raises(
        ModelLoadError, match=r"/models/x has no model\.safetensors \(loading on cpu\)"
    ) as info:
        pool.map("double", [([1],), ([2],)])
    assert any("while the bgekit worker on device cpu" in note for note in info.value.__notes__)
    assert pool.closed


def test_a_hung_worker_becomes_an_error_with_a_timeout() -> None:
    pool = DevicePool(Doubler(), ["cpu"], timeout=10)
    assert pool.map("double", [([1],)]) == [[2]]
    processes = list(pool._executor._processes.values())  # type: ignore[attr-defined]
    pool.timeout = 0.5
    with pytest.raises(WorkerError, match=r"no answer within timeout=0\.5 s"):
        pool.map("hang", [()])
    assert pool.closed and not any(p.is_alive() for p in processes)
    with pytest.raises(ValueError, match="timeout=0"):
        DevicePool(Doubler(), ["cpu"], timeout=0)
