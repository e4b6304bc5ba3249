"""The model worker: requests queued together run as one call, in order, and one bad request fails alone."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bgekit.serve.worker import ModelWorker


class _Recorder:
    """A runner that records each call and can be held until released."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.gate = threading.Event()

    def __call__(self, key: Any, items: list[Any]) -> list[Any]:
        self.gate.wait(10)
        if "bad" in items:
            raise ValueError("bad item")
        self.calls.append(list(items))
        return [f"{key[1]}:{item}" for item in items]


def test_queued_jobs_of_one_kind_run_as_one_call_and_get_their_own_outputs() -> None:
    runner = _Recorder()
    worker = ModelWorker({"run": runner})
    try:
        first = worker.submit(("run", "a"), [0], tokens=1)  # taken at once; the gate holds it
        while worker.depth:
            pass
        later = [worker.submit(("run", "a"), [i, i + 100], tokens=2) for i in range(1, 6)]
        other = worker.submit(("run", "b"), ["x"], tokens=1)  # another kind: its own call
        runner.gate.set()
        assert first.result(10) == ["a:0"]
        assert [f.result(10) for f in later] == [[f"a:{i}", f"a:{i + 100}"] for i in range(1, 6)]
        assert other.result(10) == ["b:x"]
        assert runner.calls == [[0], [i for k in range(1, 6) for i in (k, k + 100)], ["x"]]
    finally:
        worker.stop()


def test_the_token_cap_splits_groups_and_a_bad_job_fails_alone() -> None:
    runner = _Recorder()
    worker = ModelWorker({"run": runner}, max_batch_tokens=4)
    try:
        held = worker.submit(("run", "k"), ["hold"], tokens=1)
        while worker.depth:
            pass
        jobs = [worker.submit(("run", "k"), [i], tokens=2) for i in range(4)]
        bad = worker.submit(("run", "k"), ["bad"], tokens=1)
        good = worker.submit(("run", "k"), ["ok"], tokens=1)
        runner.gate.set()
        held.result(10)
        assert [f.result(10) for f in jobs] == [[f"k:{i}"] for i in range(4)]
        assert runner.calls[1:3] == [[0, 1], [2, 3]]  # 2 + 2 tokens per call
        with pytest.raises(ValueError, match="bad item"):
            bad.result(10)
        assert good.result(10) == ["k:ok"]
    finally:
        worker.stop()


def test_a_cancelled_job_is_not_run_and_a_failed_warmup_is_reported() -> None:
    runner = _Recorder()
    worker = ModelWorker({"run": runner})
    try:
        held = worker.submit(("run", "k"), ["hold"], tokens=1)
        while worker.depth:
            pass
        dropped = worker.submit(("run", "k"), ["dropped"], tokens=1)
        assert dropped.cancel()
        runner.gate.set()
        held.result(10)
        worker.submit(("run", "k"), ["after"], tokens=1).result(10)
        assert ["dropped"] not in runner.calls
    finally:
        worker.stop()

    def broken() -> None:
        raise RuntimeError("weights are corrupt")

    failing = ModelWorker({"run": runner}, warmup=broken)
    try:
        job = failing.submit(("run", "k"), ["x"], tokens=1)
        with pytest.raises(RuntimeError, match="weights are corrupt"):
            job.result(10)
        assert not failing.ready.is_set() and failing.failed is not None
    finally:
        failing.stop()


def test_a_group_waits_for_announced_jobs_but_never_for_unannounced_ones() -> None:
    runner = _Recorder()
    runner.gate.set()
    worker = ModelWorker({"run": runner}, batch_wait=5.0)
    try:
        # nothing announced: a lone job runs at once, far inside the 5 s wait
        assert worker.submit(("run", "a"), [0], tokens=1).result(2) == ["a:0"]
        # two announced jobs: the first waits for the second, and both run as one call
        worker.expect()
        worker.expect()
        first = worker.submit(("run", "a"), [1], tokens=1, expected=True)
        timer = threading.Timer(0.2, lambda: worker.submit(("run", "a"), [2], tokens=1, expected=True))
        timer.start()
        assert first.result(10) == ["a:1"]
        assert runner.calls[-1] == [1, 2]
        # an announced job that never comes (its request failed) releases the wait
        worker.expect()
        worker.expect()
        third = worker.submit(("run", "a"), [3], tokens=1, expected=True)
        threading.Timer(0.2, worker.unexpect).start()
        assert third.result(2) == ["a:3"]
    finally:
        worker.stop()


def test_freed_heap_memory_is_given_back_between_groups() -> None:
    from bgekit.serve.memory import HeapTrimmer, heap_trimmer

    assert heap_trimmer() is not None  # glibc on the machines bgekit serves from
    trimmer = HeapTrimmer(interval=3600.0)
    assert trimmer.maybe_trim() is True and trimmer.maybe_trim() is False  # at most once per interval
    worker = ModelWorker({"run": lambda key, items: items}, trim_interval=0.0)
    calls: list[int] = []
    assert worker.trimmer is not None
    worker.trimmer._trim = lambda: calls.append(1) or 1
    try:
        for i in range(3):
            assert worker.submit(("run",), [i], tokens=1).result(10) == [i]
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 3
    finally:
        worker.stop()


def test_two_threads_run_two_groups_at_once_after_the_warmup() -> None:
    """With threads=2 a second group runs while the first is still running, and none before the warm-up."""
    meeting = threading.Barrier(2, timeout=10)  # broken unless both groups are inside a runner together
    warmed: list[str] = []

    def warmup() -> None:
        time.sleep(0.2)
        warmed.append("done")

    def runner(key: Any, items: list[Any]) -> list[Any]:
        assert warmed, "a group ran before the warm-up ended"
        meeting.wait()
        return [(key[1], item) for item in items]

    worker = ModelWorker({"run": runner}, threads=2, warmup=warmup)
    try:
        first = worker.submit(("run", "a"), [1], tokens=1)
        second = worker.submit(("run", "b"), [2], tokens=1)  # another kind: a group of its own
        assert first.result(10) == [("a", 1)]
        assert second.result(10) == [("b", 2)]
        assert worker.alive and len(worker._threads) == 2
    finally:
        worker.stop()
    assert not worker.alive
    with pytest.raises(ValueError, match="threads=0"):
        ModelWorker({"run": runner}, threads=0)


def _wait_idle(worker: ModelWorker, threads: int) -> None:
    deadline = time.monotonic() + 10
    while worker.idle_threads < threads:
        assert time.monotonic() < deadline, "the worker's threads never went idle"
        time.sleep(0.005)


def test_a_large_group_is_shared_with_idle_threads_and_its_outputs_come_back_in_order() -> None:
    both_running = threading.Barrier(2, timeout=10)  # passes only if the two parts run at the same time
    calls: list[tuple[str, list[int]]] = []

    def runner(key: Any, items: list[int]) -> list[str]:
        both_running.wait()
        calls.append((threading.current_thread().name, list(items)))
        return [f"{item}!" for item in items]

    worker = ModelWorker({"run": runner}, threads=2, split_tokens=32)
    try:
        worker.start()
        _wait_idle(worker, 2)
        sizes = [30, 5, 5, 10, 5, 5]  # one long text and five short ones: 30 tokens each way
        outputs = worker.submit(("run",), list(range(6)), tokens=60, sizes=sizes).result(10)
        assert outputs == [f"{i}!" for i in range(6)]
        assert sorted(items for _, items in calls) == [[0], [1, 2, 3, 4, 5]]
        assert len({name for name, _ in calls}) == 2  # one part on each thread
        # below split_tokens a group runs whole, on one thread
        calls.clear()
        both_running = threading.Barrier(1)
        _wait_idle(worker, 2)
        assert worker.submit(("run",), [7, 8], tokens=20).result(10) == ["7!", "8!"]
        assert [items for _, items in calls] == [[7, 8]]
    finally:
        worker.stop()


def test_a_shared_group_that_fails_reruns_whole_so_the_error_names_the_request_s_own_positions() -> None:
    def runner(key: Any, items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError(f"bad input at position {items.index('bad')}")
        return items

    worker = ModelWorker({"run": runner}, threads=2, split_tokens=2)
    try:
        worker.start()
        _wait_idle(worker, 2)
        items = ["a", "b", "c", "d", "bad", "e"]
        with pytest.raises(ValueError, match="at position 4$"):
            worker.submit(("run",), items, tokens=60, sizes=[10] * 6).result(10)
        with pytest.raises(ValueError, match="2 sizes for 3 items"):
            worker.submit(("run",), ["a", "b", "c"], tokens=3, sizes=[1, 2])
    finally:
        worker.stop()
