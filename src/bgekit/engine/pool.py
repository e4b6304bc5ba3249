"""One worker process per device (spawn), with errors propagated to the caller instead of hanging.

Each worker builds its own model once (``factory(device)``) and then serves method calls. A worker that
raises sends the exception back; a worker that dies (killed, segfault) breaks the pool, which is reported
as ``WorkerError`` rather than a hang, unlike FlagEmbedding's pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bgekit.errors import WorkerError

_WORKER_OBJECT: Any = None
_WORKER_DEVICE: str | None = None


def _init_worker(factory: Callable[[str], Any], devices: Any, threads: int) -> None:
    global _WORKER_OBJECT, _WORKER_DEVICE
    device = devices.get()
    _WORKER_DEVICE = device
    if device.startswith("cpu"):
        import torch

        torch.set_num_threads(threads)
    _WORKER_OBJECT = factory(device)


def _call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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

    Example:
        >>> pool = DevicePool(SomeFactory(), ["cpu", "cpu"])        # doctest: +SKIP
        >>> pool.map("encode", [(chunk,) for chunk in chunks])      # doctest: +SKIP
    """

    def __init__(self, factory: Callable[[str], Any], devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("devices must name at least one device")
        self.devices = [str(d) for d in devices]
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
            WorkerError: when a worker process died; a worker's own exception is re-raised as is.
        """
        futures = [self._executor.submit(_call, method, tuple(args), kwargs) for args in calls]
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            for future in futures:
                future.cancel()
            self.close()
            raise WorkerError(
                f"a bgekit worker process on one of {self.devices} died unexpectedly "
                f"(killed, out of memory, or a crash in native code); the pool was shut down"
            ) from exc
        except BaseException:
            for future in futures:
                future.cancel()
            raise

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
