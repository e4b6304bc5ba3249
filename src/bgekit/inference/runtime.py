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

BACKENDS = ("torch", "onnx", "openvino", "auto")
GRAPH_BACKENDS = ("onnx", "openvino")
"""Backends that run the model's exported graph in their own runtime (and threads), on the CPU only."""
"""What runs a model: PyTorch, ONNX Runtime, OpenVINO, or the fastest of them measured on this machine."""


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime of a model.

    Attributes:
        devices: every device the model runs on (one worker process each when more than one).
        device: the first of them, where the model loads in single-device mode.
        max_tokens_per_batch: the batching engine's padded-token budget (``None``: no cap).
        quantization: ``None`` or ``"int8"``.
        backend: ``"torch"``, ``"onnx"``, ``"openvino"``, or ``"auto"`` for the model to measure (see
            ``autotune``).
        dtype: the dtype name that runs on ``device`` (``"fp16"`` asked for on a CPU is ``"fp32"`` here).
        torch_dtype: the same as a torch dtype.
        requested_dtype: the dtype as the caller gave it, passed on to worker processes so that each one
            resolves it (``"auto"`` included) for its own device.
        worker_timeout: with several devices, the most seconds one call may wait for the worker
            processes (loading included) before they are stopped and ``WorkerError`` is raised; ``None``:
            no limit.
    """

    devices: list[str]
    device: torch.device
    max_tokens_per_batch: int | None
    quantization: str | None
    backend: str
    dtype: str
    torch_dtype: torch.dtype
    requested_dtype: str | None
    worker_timeout: float | None = None


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """``value`` as a positive int, or ConfigError naming ``name``.

    Example:
        >>> check_batch_size(32)
        32
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise ConfigError(f"{name}={value!r} is not valid; give a whole number of texts >= 1")
    return int(value)


def check_device_available(device: torch.device, name: str) -> None:
    """ConfigError when ``device`` is a CUDA (or MPS) device this machine does not have."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"{name} asks for CUDA, but this machine has no CUDA device (or torch was built without "
                "CUDA); use device='cpu'"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{name} asks for {device}, but this machine has {count} CUDA device(s): "
                f"{', '.join(f'cuda:{i}' for i in range(count))}"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"{name} asks for MPS, which this machine does not have; use device='cpu'")


def resolve_runtime(kwargs: dict[str, Any], default_dtype: str, gpu_token_budget: int) -> Runtime:
    """Check and resolve the runtime keyword arguments of an Embedder or Reranker.

    Args:
        kwargs: the constructor's keyword arguments (``device``, ``devices``, ``max_tokens_per_batch``,
            ``quantization``, ``backend``, ``dtype``, ``batch_size``, ``worker_timeout``; others are
            ignored).
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
    for i, name in enumerate(names):
        check_device_available(
            resolve_device(name), f"devices[{i}]={name!r}" if devices else f"device={name!r}"
        )
    first = resolve_device(names[0])
    if kwargs.get("batch_size") is not None:
        check_batch_size(kwargs["batch_size"])
    worker_timeout = kwargs.get("worker_timeout")
    if worker_timeout is not None and (
        isinstance(worker_timeout, bool)
        or not isinstance(worker_timeout, int | float)
        or not worker_timeout > 0
    ):
        raise ConfigError(
            f"worker_timeout={worker_timeout!r} is not valid; give a number of seconds > 0, or None for no limit"
        )
    quantization = kwargs.get("quantization")
    if quantization not in (None, "int8", "int8-static"):
        raise ConfigError(f"quantization={quantization!r} is not valid; choose None, 'int8' or 'int8-static'")
    # int8 runs through ONNX Runtime's maintained dynamic quantisation (not torch.ao's deprecated one)
    backend = kwargs.get("backend") or ("onnx" if quantization else "torch")
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not valid; choose 'torch', 'onnx', 'openvino' or 'auto'")
    if backend in GRAPH_BACKENDS and first.type != "cpu":
        raise ConfigError(f"backend={backend!r} runs on the CPU; use backend='torch' for {first}")
    if backend == "auto" and (quantization or first.type != "cpu"):
        # int8 runs on a graph calibrated for one runtime; accelerators run PyTorch: nothing to measure
        backend = "onnx" if quantization else "torch"
    if quantization == "int8" and backend not in GRAPH_BACKENDS:
        raise ConfigError(
            f"quantization='int8' runs on backend='onnx' (ONNX Runtime's dynamic int8, the default) or "
            f"'openvino' (int8 weights, inputs quantised per group of one token at run time), not {backend!r}"
        )
    if quantization == "int8-static" and backend not in GRAPH_BACKENDS:
        raise ConfigError(
            "quantization='int8-static' runs on backend='onnx' or 'openvino' (the graph `bgekit quantize "
            f"--backend` calibrated), not {backend!r}"
        )
    requested = kwargs.get("dtype")
    # "auto" is resolved by the model (autotune measures the candidates); until then dtypes follow torch's rules
    dtype_backend = "torch" if backend == "auto" else backend
    dtype, torch_dtype = resolve_dtype(requested, default_dtype, first, dtype_backend, stacklevel=5)
    return Runtime(
        devices=names,
        device=first,
        max_tokens_per_batch=default_token_budget(kwargs, first, gpu_token_budget),
        quantization=quantization,
        backend=backend,
        dtype=dtype,
        torch_dtype=torch_dtype,
        requested_dtype=requested,
        worker_timeout=None if worker_timeout is None else float(worker_timeout),
    )
