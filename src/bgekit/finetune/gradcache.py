"""GradCache: contrastive batches larger than memory, with the same gradients as the full batch.

Gao et al. (2021), "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup". The
contrastive loss depends on the encoder only through the embeddings, so the step is split in three:

1. encode every chunk of ``chunk_size`` texts without building a graph, keeping each chunk's random
   state (dropout) so it can be replayed;
2. compute the loss on the detached embeddings and backpropagate it to them, giving ``dL/de``;
3. re-encode each chunk with a graph under the same random state and backpropagate ``e . dL/de``,
   which adds exactly that chunk's share of ``dL/dtheta``.

Peak activation memory is one chunk's, whatever the batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch


class RandContext:
    """Captures the CPU and CUDA random states at creation; ``with ctx:`` replays them.

    Example:
        >>> ctx = RandContext(); a = torch.rand(1)
        >>> with ctx: b = torch.rand(1)
        >>> bool(a == b)
        True
    """

    def __init__(self) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._fork: Any = None

    def __enter__(self) -> RandContext:
        devices = list(range(torch.cuda.device_count())) if self.cuda_states is not None else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)
        return self

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def split_features(features: dict[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Cut a padded batch (dict of tensors with the batch first) into chunks of ``chunk_size`` rows.

    Example:
        >>> [c["input_ids"].shape[0] for c in split_features({"input_ids": torch.zeros(5, 3)}, 2)]
        [2, 2, 1]
    """
    rows = next(iter(features.values())).shape[0]
    return [
        {k: v[start : start + chunk_size] for k, v in features.items()}
        for start in range(0, rows, chunk_size)
    ]


def grad_cache_step(
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    inputs: Sequence[dict[str, torch.Tensor]],
    chunk_size: int,
    *,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """Run one GradCache forward/backward; gradients accumulate into the encoder's parameters.

    Args:
        encode: features -> embeddings (with a graph when grad is enabled).
        loss_fn: ``loss_fn(*embeddings)`` with one embedding tensor per item of ``inputs``.
        inputs: padded batches, e.g. ``[queries, passages]``.
        chunk_size: rows per forward pass.
        loss_scale: multiply the gradients (``1 / gradient_accumulation_steps``).
        no_sync: the data-parallel wrapper's ``no_sync`` (gradients are all-reduced on the last chunk only).

    Returns:
        the (unscaled) loss, detached.

    Example:
        >>> loss = grad_cache_step(lambda f: model(f), lambda q, p: my_loss(q, p), [q_feats, p_feats], 8)  # doctest: +SKIP
    """
    chunks = [split_features(features, chunk_size) for features in inputs]
    states: list[list[RandContext]] = []
    cached: list[torch.Tensor] = []
    with torch.no_grad():
        for item_chunks in chunks:
            item_states = []
            reps = []
            for chunk in item_chunks:
                item_states.append(RandContext())
                reps.append(encode(chunk))
            states.append(item_states)
            cached.append(torch.cat(reps, dim=0))
    leaves = [r.detach().requires_grad_() for r in cached]
    loss = loss_fn(*leaves)
    loss.backward()
    grads = [leaf.grad for leaf in leaves]
    total = sum(len(c) for c in chunks)
    done = 0
    for item_chunks, item_states, grad in zip(chunks, states, grads, strict=True):
        assert grad is not None
        offset = 0
        for chunk, state in zip(item_chunks, item_states, strict=True):
            done += 1
            last = done == total
            sync: contextlib.AbstractContextManager[Any] = (
                no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            )
            with sync, state:
                chunk_reps = encode(chunk)
                rows = chunk_reps.shape[0]
                surrogate = (
                    chunk_reps * (grad[offset : offset + rows] * loss_scale).to(chunk_reps.dtype)
                ).sum()
                surrogate.backward()
            offset += rows
    return loss.detach()
