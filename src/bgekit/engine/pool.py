"""One worker process per device (spawn), with errors propagated to the caller instead of hanging.

Each worker builds its own model once (``factory(device)``) and then serves method calls. A worker that
raises sends the exception back, and one that fails while building its model sends that error back on
its first call (rather than dying with it); a worker that dies (killed, segfault) breaks the pool, which
is reported as ``WorkerError`` rather than a hang, unlike FlagEmbedding's pool; with a ``timeout`` a
worker that hangs is stopped and reported as ``WorkerError`` too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bgekit.errors import WorkerError

_WORKER_OBJECT: Any = None
_WORKER_DEVICE: str | None = None
_LOAD_ERROR: Exception | None = None


def _init_worker(factory: Callable[[str], Any], devices: Any, threads: int) -> None:
    global _WORKER_OBJECT, _WORKER_DEVICE, _LOAD_ERROR
    device = devices.get()
    _WORKER_DEVICE = device
    try:
        if device.startswith("cpu"):
            import torch

            torch.set_num_threads(threads)
        _WORKER_OBJECT = factory(device)
    except Exception as exc:
        # an initializer that raises only kills its process, and the caller would learn nothing but
        # "a process died": keep the error and answer every call with it
        exc.add_note(
            f"(raised while the bgekit worker on device {device}, pid {os.getpid()}, loaded its model)"
        )
        exc.bgekit_worker_load_failed = True  # type: ignore[attr-defined]
        _LOAD_ERROR = exc


def _call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _LOAD_ERROR is not None:
        raise _LOAD_ERROR
    try:
        return getattr(_WORKER_OBJECT, method)(*args, **kwargs)
    except Exception as exc:
        exc.add_note(f"(raised in the bgekit worker on device {_WORKER_DEVICE}, pid {os.getpid()})")
        raise


class DevicePool:
    """A pool of spawned worker processes, one per device, each holding one model.

    Args:
        factory: a picklable callable ``factory(device) -> object`` run once in each worker.
        devices: one entry per worker, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``.
        timeout: the most seconds one ``map`` call may wait for the workers (loading their models
            included); past it the workers are stopped and ``WorkerError`` is raised. ``None``: no limit.

    Example:
        >>> pool = DevicePool(SomeFactory(), ["cpu", "cpu"])        # doctest: +SKIP
        >>> pool.map("encode", [(chunk,) for chunk in chunks])      # doctest: +SKIP
    """

    def __init__(
        self, factory: Callable[[str], Any], devices: Sequence[str], *, timeout: float | None = None
    ) -> None:
        if not devices:
            raise ValueError("devices must name at least one device")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout={timeout!r} is not valid; give a number of seconds > 0 or None")
        self.devices = [str(d) for d in devices]
        self.timeout = timeout
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for device in self.devices:
            queue.put(device)
        n_cpu_workers = sum(d.startswith("cpu") for d in self.devices) or 1
        threads = max(1, (os.cpu_count() or 1) // n_cpu_workers)
        self._executor = ProcessPoolExecutor(
            max_workers=len(self.devices),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(factory, queue, threads),
        )
        self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=True, cancel_futures=True)

    def map(self, method: str, calls: Sequence[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        """Call ``method(*args, **kwargs)`` on the workers for each ``args`` in ``calls``; results in order.

        Raises:
            WorkerError: when a worker process died, or gave no answer within ``timeout``; a worker's own
                exception (one raised while loading its model included) is re-raised as is.
        """
        futures = [self._executor.submit(_call, method, tuple(args), kwargs) for args in calls]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            results = []
            for future in futures:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    results.append(future.result(timeout=remaining))
                except TimeoutError:
                    if future.done():  # the worker's own TimeoutError
                        raise
                    self._stop_workers()
                    raise WorkerError(
                        f"the bgekit workers on {self.devices} gave no answer within timeout={self.timeout:g} s "
                        "(a worker hung, or the work needs a longer timeout); the pool was shut down"
                    ) from None
            return results
        except BrokenProcessPool as exc:
            for future in futures:
                future.cancel()
            self.close()
            raise WorkerError(
                f"a bgekit worker process on one of {self.devices} died unexpectedly "
                f"(killed, out of memory, or a crash in native code); the pool was shut down"
            ) from exc
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if getattr(exc, "bgekit_worker_load_failed", False):
                self.close()  # a worker without its model cannot serve any later call either
            raise

    def _stop_workers(self) -> None:
        # shutdown() waits for running calls, which a hung worker never finishes: stop the processes first
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, end) ranges covering ``range(n)``, sizes differing by at most one."""
    parts = max(1, min(parts, n)) if n else 1
    base, extra = divmod(n, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges
