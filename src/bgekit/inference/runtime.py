"""Where and how a model runs: devices, token budget, backend, int8 quantisation and dtype, checked once.

Embedder and Reranker take the same runtime arguments; this module owns their meaning and validation so
the two classes cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bgekit.engine import default_token_budget
from bgekit.errors import ConfigError
from bgekit.models.loading import resolve_device, resolve_dtype


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime of a model.

    Attributes:
        devices: every device the model runs on (one worker process each when more than one).
        device: the first of them, where the model loads in single-device mode.
        max_tokens_per_batch: the batching engine's padded-token budget (``None``: no cap).
        quantization: ``None`` or ``"int8"``.
        backend: ``"torch"`` or ``"onnx"``.
        dtype: the dtype name that runs on ``device`` (``"fp16"`` asked for on a CPU is ``"fp32"`` here).
        torch_dtype: the same as a torch dtype.
        requested_dtype: the dtype as the caller gave it, passed on to worker processes so that each one
            resolves it (``"auto"`` included) for its own device.
    """

    devices: list[str]
    device: torch.device
    max_tokens_per_batch: int | None
    quantization: str | None
    backend: str
    dtype: str
    torch_dtype: torch.dtype
    requested_dtype: str | None


def resolve_runtime(kwargs: dict[str, Any], default_dtype: str, gpu_token_budget: int) -> Runtime:
    """Check and resolve the runtime keyword arguments of an Embedder or Reranker.

    Args:
        kwargs: the constructor's keyword arguments (``device``, ``devices``, ``max_tokens_per_batch``,
            ``quantization``, ``backend``, ``dtype``; others are ignored).
        default_dtype: the dtype when the caller gives none (the checkpoint's or the model kind's).
        gpu_token_budget: the token budget on GPUs when the caller gives none.

    Raises:
        ConfigError: naming the argument at fault and what would be valid.

    Example:
        >>> resolve_runtime({"device": "cpu", "quantization": "int8"}, "fp32", 16384).backend
        'onnx'
    """
    devices = kwargs.get("devices")
    device = kwargs.get("device")
    if isinstance(devices, str):
        devices = [devices]
    if devices is not None and device is not None:
        raise ConfigError("give either device= or devices=, not both")
    if devices is not None and len(devices) == 0:
        raise ConfigError("devices=[] is empty; name at least one device or leave it out")
    names = [str(d) for d in devices] if devices else [str(resolve_device(device))]
    first = resolve_device(names[0])
    quantization = kwargs.get("quantization")
    if quantization not in (None, "int8"):
        raise ConfigError(f"quantization={quantization!r} is not valid; choose None or 'int8'")
    # int8 runs through ONNX Runtime's maintained dynamic quantisation (not torch.ao's deprecated one)
    backend = kwargs.get("backend") or ("onnx" if quantization else "torch")
    if backend not in ("torch", "onnx"):
        raise ConfigError(f"backend={backend!r} is not valid; choose 'torch' or 'onnx'")
    if quantization and backend != "onnx":
        raise ConfigError("quantization='int8' runs on backend='onnx'; leave backend out or set it to 'onnx'")
    requested = kwargs.get("dtype")
    dtype, torch_dtype = resolve_dtype(requested, default_dtype, first, backend, stacklevel=5)
    return Runtime(
        devices=names,
        device=first,
        max_tokens_per_batch=default_token_budget(kwargs, first, gpu_token_budget),
        quantization=quantization,
        backend=backend,
        dtype=dtype,
        torch_dtype=torch_dtype,
        requested_dtype=requested,
    )
