"""The model worker: one queue in front of the thread (or threads) that run the models.

Every request's texts go into one queue as a job; the worker thread takes the oldest job and every queued
job of the same kind (same route and options) up to a token cap, runs them as one call of the batching
engine (which sorts by length and fills token-budget batches), and hands each job its own slice of the
outputs through a future. Many small concurrent requests therefore cost what one large call costs, as in
TEI's router and infinity's batch handler. Requests that are still being tokenized are announced
(``expect``); while any are on their way, the worker waits up to ``batch_wait`` seconds for them to join
the group, so a burst of small requests becomes one full call instead of a small one followed by the rest.
A job whose caller gave up (timeout, disconnect) before the worker reached it is dropped without running.
With ``threads`` > 1 (models compiled for as many OpenVINO streams) several groups run at once, each thread
taking the next group when its own is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from bgekit.serve.memory import HeapTrimmer

logger = logging.getLogger(__name__)

Runner = Callable[[Hashable, list[Any]], Sequence[Any]]
"""Runs one group: ``(key, items)`` -> one output per item, in order."""


@dataclass
class Job:
    """One request's items for one runner, and the future its caller awaits."""

    key: Hashable
    items: list[Any]
    tokens: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class WorkerStats:
    """Hooks the worker calls (the server's metrics); the default does nothing."""

    def queued(self, depth: int) -> None:
        """The queue now holds ``depth`` jobs."""

    def ran(self, texts: int, tokens: int, queue_seconds: list[float], run_seconds: float) -> None:
        """A group of ``texts`` items (``tokens`` tokens) ran in ``run_seconds`` after waiting."""


class ModelWorker:
    """A queue and the thread that runs its jobs on the models.

    Args:
        runners: the function for each job kind (the first element of a job's key).
        max_batch_tokens: most tokens one group gathers from many jobs (a single larger job runs alone).
        warmup: called once on the worker thread before the first job; the worker is ``ready`` after it.
        stats: metrics hooks.
        batch_wait: most seconds a group waits for announced jobs (``expect``) still on their way; the
            worker never waits when none is announced, so a lone request starts at once.
        trim_interval: after a group, freed heap memory goes back to the system at most this often
            (seconds; ``None``: never), so resident memory does not climb with every new input shape.
        threads: groups that run at once, one per thread (the runners must allow as many concurrent calls).

    Example:
        >>> worker = ModelWorker({"double": lambda key, items: [2 * x for x in items]})
        >>> worker.submit(("double",), [1, 2], tokens=2).result()
        [2, 4]
        >>> worker.stop()
    """

    def __init__(
        self,
        runners: dict[str, Runner],
        *,
        max_batch_tokens: int = 16384,
        warmup: Callable[[], None] | None = None,
        stats: WorkerStats | None = None,
        batch_wait: float = 0.005,
        trim_interval: float | None = 1.0,
        threads: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads={threads} is not valid; expected >= 1")
        self.runners = runners
        self.threads = threads
        self.batch_wait = batch_wait
        self.trimmer = HeapTrimmer(trim_interval) if trim_interval is not None else None
        self.max_batch_tokens = max_batch_tokens
        self.warmup = warmup
        self.stats = stats or WorkerStats()
        self.ready = threading.Event()
        self._warmed = threading.Event()  # the warm-up ended, well or not
        self.failed: BaseException | None = None
        self._jobs: deque[Job] = deque()
        self._incoming = 0  # announced jobs not submitted yet
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._jobs)

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._start_lock:
            if not self._threads:
                for number in range(self.threads):
                    name = "bgekit-model-worker" + (f"-{number}" if number else "")
                    thread = threading.Thread(target=self._loop, args=(number,), name=name, daemon=True)
                    self._threads.append(thread)
                    thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def expect(self) -> None:
        """Announce a job that is on its way (being tokenized); ``submit(..., expected=True)`` or
        ``unexpect`` must follow."""
        with self._cond:
            self._incoming += 1

    def unexpect(self) -> None:
        """An announced job will not come (its request failed before submitting)."""
        with self._cond:
            self._incoming = max(0, self._incoming - 1)
            self._cond.notify_all()

    def submit(self, key: Hashable, items: list[Any], tokens: int, *, expected: bool = False) -> Future:
        """Queue ``items`` for the runner of ``key[0]``; the future resolves to their outputs in order.

        ``expected``: this job was announced by ``expect`` (the announcement ends here, even on an error).
        """
        if not isinstance(key, tuple) or key[0] not in self.runners:
            if expected:
                self.unexpect()
            raise KeyError(f"no runner for job key {key!r}")
        self.start()
        job = Job(key, items, max(1, tokens))
        with self._cond:
            if expected:
                self._incoming = max(0, self._incoming - 1)
            if self._stopping:
                raise RuntimeError("the model worker is shutting down")
            self._jobs.append(job)
            self.stats.queued(len(self._jobs))
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the jobs already queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------------ the thread
    def _loop(self, number: int) -> None:
        if number == 0:
            self._warm_up()
        else:
            self._warmed.wait()  # groups wait for the warm-up (or its failure) on every thread
        while True:
            group = self._next_group()
            if group is None:
                return
            self._run(group)
            if self.trimmer is not None:
                self.trimmer.maybe_trim()

    def _warm_up(self) -> None:
        try:
            if self.warmup is not None:
                self.warmup()
        except BaseException as exc:  # the server reports it on /health and in every answer
            logger.exception("the model failed its warm-up forward pass")
            self.failed = exc
        else:
            self.ready.set()
        finally:
            self._warmed.set()

    def _next_group(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._jobs.popleft()
            group, tokens = [first], first.tokens
            tokens = self._gather(group, tokens)
            deadline = time.perf_counter() + self.batch_wait
            # requests still being tokenized are about to arrive: let them join rather than run next time
            while self._incoming > 0 and tokens < self.max_batch_tokens and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
                tokens = self._gather(group, tokens)
            self.stats.queued(len(self._jobs))
        # a future cancelled by its caller (timeout, disconnect) is dropped; the rest are marked running
        return [job for job in group if job.future.set_running_or_notify_cancel()]

    def _gather(self, group: list[Job], tokens: int) -> int:
        """Move queued jobs of the group's kind into it, up to the token cap (under the lock)."""
        kept: deque[Job] = deque()
        while self._jobs:
            job = self._jobs.popleft()
            if job.key == group[0].key and tokens + job.tokens <= self.max_batch_tokens:
                group.append(job)
                tokens += job.tokens
            else:
                kept.append(job)
        self._jobs = kept
        return tokens

    def _run(self, group: list[Job]) -> None:
        if not group:
            return
        if self.failed is not None:
            for job in group:
                job.future.set_exception(self.failed)
            return
        runner = self.runners[group[0].key[0]]  # type: ignore[index]
        items = [item for job in group for item in job.items]
        started = time.perf_counter()
        try:
            outputs = list(runner(group[0].key, items))
            if len(outputs) != len(items):
                raise RuntimeError(f"a runner returned {len(outputs)} outputs for {len(items)} inputs")
        except BaseException as exc:
            if len(group) > 1:
                # one request's bad input must not fail the others grouped with it: run each alone
                for job in group:
                    self._run_alone(runner, job)
                return
            group[0].future.set_exception(exc)
            return
        self.stats.ran(
            len(items),
            sum(job.tokens for job in group),
            [started - job.enqueued for job in group],
            time.perf_counter() - started,
        )
        start = 0
        for job in group:
            job.future.set_result(outputs[start : start + len(job.items)])
            start += len(job.items)

    def _run_alone(self, runner: Runner, job: Job) -> None:
        started = time.perf_counter()
        try:
            outputs = list(runner(job.key, job.items))
        except BaseException as exc:
            job.future.set_exception(exc)
            return
        self.stats.ran(len(job.items), job.tokens, [started - job.enqueued], time.perf_counter() - started)
        job.future.set_result(outputs)
