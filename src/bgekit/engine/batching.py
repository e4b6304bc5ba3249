"""The batching engine: run a model over many inputs in length-sorted batches filled by a token budget.

A model class only says how to turn one batch (a list of input indices) into outputs; the engine decides
which inputs go together, shrinks batches on out-of-memory errors (and only those), grows them back, shows
progress, and returns every output in input order.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bgekit.errors import NonFiniteOutputError

logger = logging.getLogger(__name__)

PROGRESS_THRESHOLD = 1024
"""With ``show_progress=None`` a bar is shown for inputs at least this long."""

CPU_MAX_TOKENS_PER_BATCH = 4096
"""CPU default token budget: activations that stay in cache beat bigger matrix products (benchmarks/encode.py)."""

CPU_BATCH_OVERHEAD_TOKENS = 32
"""What one more forward pass costs on a CPU, in padded tokens (a MiniLM forward's fixed cost is about
what 30 more tokens cost). The engine splits a batch where the padding it saves is worth more than this."""


def balanced_parts(sizes: Sequence[float], count: int) -> list[list[int]]:
    """Positions of ``sizes`` split into ``count`` parts of about equal sum, largest first to the lightest
    part (ties: the part with fewer items, then the first); each part's positions in ascending order, every
    part non-empty when there are enough items.

    Example:
        >>> balanced_parts([300, 20, 280, 30, 10], 2)
        [[0, 1], [2, 3, 4]]
    """
    parts: list[list[int]] = [[] for _ in range(count)]
    lightest = [(0.0, 0, part) for part in range(count)]  # (load, items, part): a heap, lightest first
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        load, items, part = heapq.heappop(lightest)
        parts[part].append(i)
        heapq.heappush(lightest, (load + sizes[i], items + 1, part))
    return [sorted(part) for part in parts if part]


def batch_overhead_tokens(device: torch.device) -> int | None:
    """The batch planner's cost of one more forward pass on ``device``, in padded tokens; ``None`` on
    accelerators, where a forward pass costs about the same at any small size, so batches are filled."""
    return CPU_BATCH_OVERHEAD_TOKENS if device.type == "cpu" else None


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_tokens: int | None,
    overhead: int,
    packed_token_cost: float | None = None,
    packed_max_length: int | None = None,
) -> list[int]:
    """Batch ends for inputs sorted longest first that minimise padded tokens plus ``overhead`` per batch.

    A batch costs its row count times its longest input (the padded tokens it computes) plus ``overhead``.
    Filling each batch up to the budget pads every input to the longest one in it; when a group mixes
    short and long inputs (many small requests gathered by a server), splitting where the lengths drop
    saves more padding than the extra forward pass costs. Dynamic programming over the sorted order, with
    at most ``batch_size`` rows and ``max_tokens`` padded tokens per batch (a single input over the budget
    still gets a batch of its own). With ``packed_token_cost`` (a runner that packs short texts into
    shared rows) a batch costs at most its real tokens times that factor, so a mixed group runs as one
    packed batch instead of several padded ones; with ``packed_max_length`` too, only a batch whose
    longest input has at most that many tokens can run packed.

    Example:
        >>> plan_batches([40, 39, 10, 9, 9, 8], batch_size=8, max_tokens=None, overhead=8)
        [2, 6]
        >>> plan_batches([40, 39, 10, 9, 9, 8], batch_size=8, max_tokens=None, overhead=8, packed_token_cost=1.1)
        [6]
        >>> plan_batches(
        ...     [40, 39, 10, 9, 9, 8], batch_size=8, max_tokens=None, overhead=8,
        ...     packed_token_cost=1.1, packed_max_length=32,
        ... )
        [2, 6]
    """
    n = len(lengths)
    if n == 0:
        return []
    longest = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    before = np.concatenate([[0], np.cumsum(longest)])  # real tokens of the inputs before each position
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        # candidate starts j (batch = j..end-1, padded to longest[j]); sorted descending: the first row pads
        first = max(0, end - batch_size)
        starts = np.arange(first, end)
        rows = end - starts
        work = (rows * longest[first:end]).astype(np.float64)
        if packed_token_cost is not None:
            packed = packed_token_cost * (before[end] - before[first:end])
            if packed_max_length is not None:
                packed = np.where(longest[first:end] <= packed_max_length, packed, np.inf)
            work = np.minimum(work, packed)
        cost = best[first:end] + work + overhead
        if max_tokens is not None:
            over = rows * longest[first:end] > max_tokens
            over[-1] = False  # one input alone always fits
            cost = np.where(over, np.inf, cost)
        pick = int(np.argmin(cost))
        best[end], cut[end] = cost[pick], first + pick
    ends, end = [], n
    while end > 0:
        ends.append(end)
        end = int(cut[end])
    return ends[::-1]


def default_token_budget(kwargs: dict[str, Any], device: torch.device, gpu_default: int) -> int | None:
    """The token budget a model runs with: ``kwargs["max_tokens_per_batch"]`` when given (``None``: no cap),
    else :data:`CPU_MAX_TOKENS_PER_BATCH` on a CPU and ``gpu_default`` elsewhere."""
    if "max_tokens_per_batch" in kwargs:
        budget = kwargs["max_tokens_per_batch"]
    else:
        budget = CPU_MAX_TOKENS_PER_BATCH if device.type == "cpu" else gpu_default
    return None if budget is None else int(budget)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for allocator failures (CUDA, MPS or CPU), False for every other error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError | MemoryError):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    return False


class BatchEngine:
    """Length-sorted, token-budgeted batching with out-of-memory back-off.

    Args:
        batch_size: most inputs in one batch.
        max_tokens_per_batch: most padded tokens (longest input x count) in one batch; ``None`` for no cap.
        min_batch_size: the floor of the back-off; an OOM at this size is raised.
        show_progress: ``True``/``False``, or ``None`` for a bar on long inputs only.
        desc: the progress bar's label.
        grow_after: successful batches after a back-off before the budget doubles again.
        position_offset: added to the input positions an error names (the inputs are a slice of a larger
            call starting there, as a device-pool worker's are).
        overhead_tokens: the cost of one more forward pass in padded tokens; when given, batches are
            planned by :func:`plan_batches` (least padding plus passes) instead of filled to the budget
            (see :func:`batch_overhead_tokens`).
        packed_token_cost: the model packs a batch's short texts into shared rows, each real token costing
            this many padded ones (see :func:`plan_batches`); ``None``: every batch runs padded.
        packed_max_length: the longest input a packed batch may hold; ``None``: no limit.

    Example:
        >>> engine = BatchEngine(batch_size=2)
        >>> engine.run([3, 1, 2], lambda idx: [i * 10 for i in idx])
        [0, 10, 20]
    """

    def __init__(
        self,
        *,
        batch_size: int = 256,
        max_tokens_per_batch: int | None = None,
        min_batch_size: int = 1,
        show_progress: bool | None = None,
        desc: str = "Batches",
        grow_after: int = 8,
        position_offset: int = 0,
        overhead_tokens: int | None = None,
        packed_token_cost: float | None = None,
        packed_max_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is not valid; expected >= 1")
        if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch={max_tokens_per_batch} is not valid; expected >= 1")
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.min_batch_size = max(1, min_batch_size)
        self.show_progress = show_progress
        self.desc = desc
        self.grow_after = grow_after
        self.position_offset = position_offset
        self.overhead_tokens = overhead_tokens
        self.packed_token_cost = packed_token_cost
        self.packed_max_length = packed_max_length
        self.backoffs = 0
        """How many times the last ``run`` shrank a batch after an out-of-memory error."""

    def plan_next(self, order: Sequence[int], lengths: Sequence[int], start: int, scale: float) -> int:
        """End (exclusive) of the batch starting at ``order[start]`` under the budget times ``scale``."""
        max_count = max(self.min_batch_size, int(self.batch_size * scale))
        longest = max(1, lengths[order[start]])  # sorted longest first: the first item sets the padding
        if self.max_tokens_per_batch is not None:
            max_count = min(
                max_count, max(self.min_batch_size, int(self.max_tokens_per_batch * scale) // longest)
            )
        return min(len(order), start + max(1, max_count))

    def run(self, lengths: Sequence[int], step: Callable[[list[int]], Any]) -> Any:
        """Run ``step`` over all inputs; return its outputs assembled in input order.

        Args:
            lengths: the token length of each input (only used for ordering and budgets).
            step: called with a list of input indices; returns per-item outputs as a tensor or array
                whose first dimension matches, a list of the same length, or a dict of those.

        Returns:
            The outputs of every input, in input order, in the same structure ``step`` returns.

        Raises:
            NonFiniteOutputError: ``step`` returned NaN or infinite floats, naming the inputs that gave them.
        """
        n = len(lengths)
        if n == 0:
            return []
        order = sorted(range(n), key=lambda i: -lengths[i])
        show = self.show_progress if self.show_progress is not None else n >= PROGRESS_THRESHOLD
        chunks: list[tuple[list[int], Any]] = []
        scale, good_since_backoff, start = 1.0, 0, 0
        self.backoffs = 0
        planned: dict[int, int] = {}  # batch start -> end, while no out-of-memory back-off is in force
        if self.overhead_tokens is not None:
            ends = plan_batches(
                [lengths[i] for i in order],
                self.batch_size,
                self.max_tokens_per_batch,
                self.overhead_tokens,
                self.packed_token_cost,
                self.packed_max_length,
            )
            planned = dict(zip([0, *ends[:-1]], ends, strict=True))
        with tqdm(total=n, desc=self.desc, disable=not show, unit="item") as bar:
            while start < n:
                if scale >= 1.0 and start in planned:
                    end = planned[start]
                else:
                    end = self.plan_next(order, lengths, start, scale)
                indices = order[start:end]
                try:
                    output = step(indices)
                except Exception as exc:
                    if not is_out_of_memory(exc) or len(indices) <= self.min_batch_size:
                        raise
                    self.backoffs += 1
                    # halve until the planned batch is strictly smaller than the one that failed
                    scale /= 2
                    while scale > 1e-6 and self.plan_next(order, lengths, start, scale) - start >= len(
                        indices
                    ):
                        scale /= 2
                    good_since_backoff = 0
                    logger.warning(
                        "out of memory on a batch of %d; retrying with smaller batches", len(indices)
                    )
                    _free_cached_memory()
                    continue
                check_finite(output, indices, self.position_offset)
                chunks.append((indices, output))
                bar.update(len(indices))
                start = end
                if scale < 1.0:
                    good_since_backoff += 1
                    if good_since_backoff >= self.grow_after:
                        scale, good_since_backoff = min(1.0, scale * 2), 0
        return assemble(chunks, n)


def check_finite(output: Any, indices: Sequence[int], offset: int = 0) -> None:
    """Raise NonFiniteOutputError naming the inputs whose outputs hold NaN or infinite floats.

    ``output`` is one batch's step output (per-item tensors or arrays, lists of them or of tuples of them,
    or dicts of those); ``indices`` are the batch's input positions, ``offset`` is added to them.

    Example:
        >>> check_finite(np.array([[0.5], [np.nan]]), [4, 7])
        Traceback (most recent call last):
        ...
        bgekit.errors.NonFiniteOutputError: the model returned NaN or infinite values for the input(s) at position(s) [7] ...
    """
    bad = sorted(offset + indices[row] for row in _non_finite_rows(output, len(indices)))
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise NonFiniteOutputError(
            f"the model returned NaN or infinite values for the input(s) at position(s) [{shown}] "
            "(often a float16 overflow: try dtype='bf16' or 'fp32'; else check the model's weights)",
            bad,
        )


def _non_finite_rows(output: Any, n: int) -> set[int]:
    if isinstance(output, dict):
        return set().union(*(_non_finite_rows(value, n) for value in output.values()))
    if isinstance(output, torch.Tensor):
        if not output.is_floating_point() or output.ndim == 0:
            return set()
        finite = torch.isfinite(output).reshape(len(output), -1).all(dim=1)
        return set(torch.nonzero(~finite).flatten().tolist())
    if isinstance(output, np.ndarray):
        if not np.issubdtype(output.dtype, np.floating) or output.ndim == 0:
            return set()
        return set(np.flatnonzero(~np.isfinite(output.reshape(len(output), -1)).all(axis=1)).tolist())
    if isinstance(output, list) and len(output) == n:
        return {row for row, item in enumerate(output) if _has_non_finite(item)}
    return set()


def _has_non_finite(item: Any) -> bool:
    if isinstance(item, tuple | list):
        return any(_has_non_finite(part) for part in item)
    if isinstance(item, torch.Tensor):
        return item.is_floating_point() and not bool(torch.isfinite(item).all())
    if isinstance(item, np.ndarray):
        return np.issubdtype(item.dtype, np.floating) and not bool(np.isfinite(item).all())
    if isinstance(item, float):
        return not math.isfinite(item)
    return False


def _free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def assemble(chunks: list[tuple[list[int], Any]], n: int) -> Any:
    """Put per-batch outputs back into input order (tensors, arrays, lists, or dicts of those)."""
    first = chunks[0][1]
    if isinstance(first, dict):
        return {key: assemble([(idx, out[key]) for idx, out in chunks], n) for key in first}
    positions = np.concatenate([np.asarray(idx, dtype=np.int64) for idx, _ in chunks])
    inverse = np.empty(n, dtype=np.int64)
    inverse[positions] = np.arange(n)
    if isinstance(first, torch.Tensor):
        stacked = torch.cat([out for _, out in chunks], dim=0)
        return stacked[torch.from_numpy(inverse)]
    if isinstance(first, np.ndarray):
        return np.concatenate([out for _, out in chunks], axis=0)[inverse]
    flat: list[Any] = [None] * n
    for idx, out in chunks:
        if len(out) != len(idx):
            raise RuntimeError(f"a batch step returned {len(out)} outputs for {len(idx)} inputs")
        for i, value in zip(idx, out, strict=True):
            flat[i] = value
    return flat


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int,
    *,
    chunk_size: int = 8192,
    **kwargs: Any,
) -> list[dict[str, list[int]]]:
    """Tokenize once, without padding, truncating to ``max_length``; one feature dict per input.

    Inputs are tokenized in chunks through the fast tokenizer's batch call, so memory stays bounded.
    Extra ``kwargs`` go to the tokenizer (e.g. ``add_special_tokens=False``).
    """
    features: list[dict[str, list[int]]] = []
    for begin in range(0, len(texts), chunk_size):
        part = list(texts[begin : begin + chunk_size])
        encoded = tokenizer(
            part,
            truncation=kwargs.pop("truncation", True),
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            **kwargs,
        )
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        for i in range(len(part)):
            features.append({k: encoded[k][i] for k in keys})
    return features


def pad_sequences(
    features: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    *,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad feature dicts into tensors with an attention mask; ``input_ids`` padded with ``pad_token_id``.

    Example:
        >>> pad_sequences([{"input_ids": [5, 6]}, {"input_ids": [7]}], 0)["attention_mask"].tolist()
        [[1, 1], [1, 0]]
    """
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths) if lengths else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    keys = features[0].keys() if features else ["input_ids"]
    for key in keys:
        fill = pad_token_id if key == "input_ids" else 0
        array = np.full((len(features), width), fill, dtype=np.int64)
        for row, feature in enumerate(features):
            values = feature[key]
            if padding_side == "left":
                array[row, width - len(values) :] = values
            else:
                array[row, : len(values)] = values
        batch[key] = torch.from_numpy(array)
    mask = np.zeros((len(features), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        if padding_side == "left":
            mask[row, width - length :] = 1
        else:
            mask[row, :length] = 1
    batch["attention_mask"] = torch.from_numpy(mask)
    return batch
