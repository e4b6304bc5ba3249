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
taking the next group when its own is done. A large group taken while other threads sit idle is shared
with them: its items are split into parts of about equal tokens, one per idle thread, so a lone request
of many documents runs on every stream instead of one (the parts' outputs go back together in order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any

from bgekit.engine.batching import balanced_parts
from bgekit.serve.memory import HeapTrimmer

logger = logging.getLogger(__name__)

Runner = Callable[[Hashable, list[Any]], Sequence[Any]]
"""Runs one group: ``(key, items)`` -> one output per item, in order."""


@dataclass(eq=False)  # a job is itself: compared and removed from the queue by identity
class Job:
    """One request's items for one runner, and the future its caller awaits."""

    key: Hashable
    items: list[Any]
    tokens: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    sizes: list[int] | None = None
    """Each item's tokens, when known: a shared group is split by them."""
    part: bool = False
    """A share of a group another thread took: it runs alone, and its future is the worker's own."""


class WorkerStats:
    """Hooks the worker calls (the server's metrics); the default does nothing."""

    def queued(self, depth: int) -> None:
        """The queue now holds ``depth`` jobs."""

    def ran(self, texts: int, tokens: int, queue_seconds: list[float], run_seconds: float) -> None:
        """A group of ``texts`` items (``tokens`` tokens) ran in ``run_seconds`` after waiting."""

    def shared(self, parts: int) -> None:
        """A group was split into ``parts`` run by as many threads at once."""


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
        split_tokens: a group of at least this many tokens is shared with idle threads (``threads`` > 1).

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
        split_tokens: int = 1024,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads={threads} is not valid; expected >= 1")
        self.runners = runners
        self.threads = threads
        self.split_tokens = split_tokens
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
        self._idle = 0  # threads waiting for a job
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._jobs)

    @property
    def idle_threads(self) -> int:
        """Threads waiting for a job."""
        return self._idle

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

    def submit(
        self,
        key: Hashable,
        items: list[Any],
        tokens: int,
        *,
        expected: bool = False,
        sizes: list[int] | None = None,
    ) -> Future:
        """Queue ``items`` for the runner of ``key[0]``; the future resolves to their outputs in order.

        ``expected``: this job was announced by ``expect`` (the announcement ends here, even on an error).
        ``sizes``: each item's tokens, for splitting a group fairly between threads (else even shares).
        """
        if not isinstance(key, tuple) or key[0] not in self.runners:
            if expected:
                self.unexpect()
            raise KeyError(f"no runner for job key {key!r}")
        self.start()
        if sizes is not None and len(sizes) != len(items):
            if expected:
                self.unexpect()
            raise ValueError(f"{len(sizes)} sizes for {len(items)} items")
        job = Job(key, items, max(1, tokens), sizes=sizes)
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
            if group and group[0].part:
                self._run_part(group[0])
            else:
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
                self._idle += 1
                try:
                    self._cond.wait()
                finally:
                    self._idle -= 1
            first = self._jobs.popleft()
            if first.part:  # the worker's own future: never cancelled
                first.future.set_running_or_notify_cancel()
                return [first]
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
            if not job.part and job.key == group[0].key and tokens + job.tokens <= self.max_batch_tokens:
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
        shares = None
        try:
            shares = self._share(group, items)
            if shares is None:
                outputs = checked(runner(group[0].key, items), len(items))
            else:
                outputs = self._run_shared(runner, group[0].key, items, *shares)
        except BaseException as exc:
            if len(group) > 1 or shares is not None:
                # one request's bad input must not fail the others grouped with it, and an error names
                # positions in its own request, not in a part: run each alone
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

    def _share(self, group: list[Job], items: list[Any]) -> tuple[list[list[int]], list[Job]] | None:
        """Split a large group's items with the idle threads: (each part's item positions, the parts queued
        for the others); ``None`` to run it whole (no thread idle, or too few tokens to be worth it)."""
        if self.threads == 1 or len(items) < 2:
            return None
        tokens = sum(job.tokens for job in group)
        if tokens < self.split_tokens:
            return None
        sizes: list[float] = []
        for job in group:
            even = [job.tokens / len(job.items)] * len(job.items)
            sizes.extend(job.sizes if job.sizes is not None else even)
        with self._cond:
            waiting_parts = sum(job.part for job in self._jobs)
            count = min(self._idle - waiting_parts + 1, len(items))
            if count < 2:
                return None
            positions = balanced_parts(sizes, count)
            key = group[0].key
            parts = [
                Job(key, [items[i] for i in share], int(sum(sizes[i] for i in share)), part=True)
                for share in positions[1:]
            ]
            self._jobs.extendleft(reversed(parts))  # first in line, before any other request
            self._cond.notify_all()
        self.stats.shared(len(positions))
        return positions, parts

    def _run_shared(
        self, runner: Runner, key: Hashable, items: list[Any], positions: list[list[int]], parts: list[Job]
    ) -> list[Any]:
        """Run the first part here while idle threads run the others; the outputs in the items' order."""
        try:
            own = checked(runner(key, [items[i] for i in positions[0]]), len(positions[0]))
        finally:
            # parts no thread has taken yet run here, so this thread only ever waits for running ones
            with self._cond:
                left = [job for job in parts if job in self._jobs]
                for job in left:
                    self._jobs.remove(job)
            for job in left:
                job.future.set_running_or_notify_cancel()
                self._run_part(job)
            wait_for([job.future for job in parts])
        outputs: list[Any] = [None] * len(items)
        for share, result in zip(positions, [own, *(job.future.result() for job in parts)], strict=True):
            for i, output in zip(share, result, strict=True):
                outputs[i] = output
        return outputs

    def _run_part(self, job: Job) -> None:
        try:
            job.future.set_result(checked(self.runners[job.key[0]](job.key, job.items), len(job.items)))  # type: ignore[index]
        except BaseException as exc:
            job.future.set_exception(exc)

    def _run_alone(self, runner: Runner, job: Job) -> None:
        started = time.perf_counter()
        try:
            outputs = list(runner(job.key, job.items))
        except BaseException as exc:
            job.future.set_exception(exc)
            return
        self.stats.ran(len(job.items), job.tokens, [started - job.enqueued], time.perf_counter() - started)
        job.future.set_result(outputs)


def checked(outputs: Sequence[Any], count: int) -> list[Any]:
    """A runner's outputs as a list, or a RuntimeError when there is not one per input."""
    result = list(outputs)
    if len(result) != count:
        raise RuntimeError(f"a runner returned {len(result)} outputs for {count} inputs")
    return result
