"""What every model that runs on devices shares: runtime, worker pool, ONNX graph, adapters, save, fingerprint.

``Embedder`` and ``Reranker`` derive from :class:`DeviceModel`, as transformers' models derive from
``PreTrainedModel``: the base carries loading of the runtime (devices, dtype, token budget, backend),
the pool of worker processes with its multi-device split, the context manager, the cached ONNX export,
merging a PEFT adapter, ``save_pretrained`` and the fingerprint; a subclass holds only what makes it
different (its settings, inputs and forward).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

from bgekit.engine import DevicePool
from bgekit.engine.pool import split_evenly
from bgekit.errors import ConfigError, ModelLoadError, reject_unknown_kwargs
from bgekit.inference.autotune import AutoChoice
from bgekit.inference.onnx_backend import Task
from bgekit.inference.runtime import GRAPH_BACKENDS, check_batch_size, resolve_runtime
from bgekit.models.loading import load_pretrained, resolve_model_folder
from bgekit.models.settings import write_saved_settings

RUNTIME_ARGS = (
    "device",
    "devices",
    "batch_size",
    "max_tokens_per_batch",
    "show_progress",
    "trust_remote_code",
    "revision",
    "cache_dir",
    "backend",
    "quantization",
    "worker_timeout",
)
"""The keyword arguments every model takes for where and how it runs (see ``runtime``)."""


_Model = TypeVar("_Model", bound="DeviceModel")


class _ModelFactory:
    """Builds the same model on a given device inside a worker process (picklable)."""

    def __init__(self, cls: type[DeviceModel], folder: str, kwargs: dict[str, Any]) -> None:
        self.cls, self.folder, self.kwargs = cls, folder, kwargs

    def __call__(self, device: str) -> DeviceModel:
        return self.cls(self.folder, device=device, **self.kwargs)


class DeviceModel:
    """The base of ``Embedder`` and ``Reranker``: a Hugging Face model on one device or several.

    A subclass sets ``settings_section`` (its part of ``bgekit.json``), ``onnx_task`` and
    ``default_batch_size``, calls :meth:`_open` and :meth:`_init_runtime` from its ``__init__``, and
    implements ``_load_model``, ``_worker_kwargs`` (its own arguments for a worker's copy) and, where it
    differs, ``_check_onnx``, ``_saved_settings`` and ``_save_extra_files``.
    """

    settings_section: ClassVar[str]
    onnx_task: ClassVar[Task]
    default_batch_size: ClassVar[int]
    settings: Any
    tokenizer: Any

    def __init__(self, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> None:
        raise NotImplementedError  # each model reads its own arguments (see _open and _init_runtime)

    # ---------------------------------------------------------------------------------------- loading
    def _open(
        self, model_name_or_path: str | os.PathLike[str], kwargs: dict[str, Any], valid: tuple[str, ...]
    ) -> None:
        """Check the keyword arguments, find the model folder and read the arguments every model takes."""
        reject_unknown_kwargs(type(self).__name__, {k: v for k, v in kwargs.items() if k not in valid}, valid)
        self.name_or_path = os.fspath(model_name_or_path)
        self.folder = resolve_model_folder(
            self.name_or_path, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir")
        )
        self.trust_remote_code = bool(kwargs.get("trust_remote_code", False))
        self.batch_size = int(kwargs.get("batch_size") or self.default_batch_size)
        self.show_progress = kwargs.get("show_progress")
        self._model: Any = None
        self._pool: DevicePool | None = None

    def call_batch_size(self, given: Any = None) -> int:
        """A call's batch size: ``given`` (checked) or the model's ``batch_size``."""
        return self.batch_size if given is None else check_batch_size(given)

    def _init_runtime(self, kwargs: dict[str, Any], default_dtype: str, default_max_tokens: int) -> None:
        """Resolve devices, dtype, token budget, backend and quantisation (see ``runtime``)."""
        runtime = resolve_runtime(kwargs, default_dtype, default_max_tokens)
        self.auto_choice: AutoChoice | None = None
        if runtime.backend == "auto":
            self.auto_choice = self._choose_auto(kwargs, default_dtype, runtime.device)
            choice = self.auto_choice
            chosen = {
                **kwargs,
                "backend": choice.backend,
                "dtype": choice.dtype,
                "quantization": choice.quantization,
            }
            runtime = resolve_runtime(chosen, default_dtype, default_max_tokens)
        self.devices: list[str] = runtime.devices
        self.device: torch.device = runtime.device
        self.max_tokens_per_batch = runtime.max_tokens_per_batch
        self.backend, self.quantization = runtime.backend, runtime.quantization
        self.dtype, self.torch_dtype = runtime.dtype, runtime.torch_dtype
        self._requested_dtype = runtime.requested_dtype
        self.worker_timeout = runtime.worker_timeout

    def _choose_auto(self, kwargs: dict[str, Any], default_dtype: str, device: torch.device) -> AutoChoice:
        """Measure (or read from the cache) the fastest full-quality backend and dtype on ``device``."""
        from bgekit.inference import autotune
        from bgekit.models.loading import AUTO_BF16_MIN_SPEEDUP, cpu_bf16_speedup

        requested = kwargs.get("dtype")
        bf16_fast = requested == "auto" and cpu_bf16_speedup() >= AUTO_BF16_MIN_SPEEDUP
        openvino = importlib.util.find_spec("openvino") is not None
        paths = autotune.candidates(
            default_dtype,
            requested,
            bf16_fast,
            openvino=openvino,
            calibrated=self._calibrated_backends(),
            openvino_int8=importlib.util.find_spec("nncf") is not None,
        )
        ignored = {"device", "devices", "backend", "dtype", "quantization", "show_progress", "worker_timeout"}
        base = {k: v for k, v in kwargs.items() if k not in ignored}
        key = {
            "class": self._tune_class().__name__,
            "model": file_fingerprint(self.folder)[:16],
            "arguments": {k: repr(v) for k, v in sorted(base.items())},
            # a graph calibrated again is another candidate: measured anew
            "calibrated": {
                b: graph_fingerprint(self._calibrated_graph(b))[:16] for b in self._calibrated_backends()
            },
        }

        build = functools.partial(_build_candidate, self._tune_class(), self.name_or_path, base, str(device))
        return autotune.choose(key, paths, build, _tune_outputs)

    def _tune_class(self) -> type[DeviceModel]:
        """The class ``backend="auto"`` builds its candidates with (compat subclasses take other arguments)."""
        raise NotImplementedError

    def _tune_outputs(self, texts: list[str]) -> Any:
        """What ``backend="auto"`` times and compares: this model's outputs for ``texts`` as one array."""
        raise NotImplementedError

    def _load_model(self) -> Any:
        """The model on this process's device, loaded once: the ONNX runner or the torch model."""
        if self._model is None:
            if self.backend == "onnx":
                self._model = self._onnx_runner()
            elif self.backend == "openvino":
                self._model = self._openvino_runner()
            else:
                self._model = self._load_torch_model()
            self._after_load()
        return self._model

    def _load_torch_model(self) -> Any:
        raise NotImplementedError

    def _load_weights(self, auto_class: Any) -> Any:
        """The checkpoint's weights as ``auto_class`` in this model's dtype, on its device."""
        return load_pretrained(
            auto_class,
            self.folder,
            dtype=self.torch_dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
        )

    def _after_load(self) -> None:
        """Move what the model needs beside it (heads) to its device."""

    @property
    def model(self) -> Any:
        """The ``transformers`` model (or ONNX runner), loaded on first use in multi-device mode."""
        return self._load_model()

    def _check_onnx(self) -> None:
        """Raise ConfigError when this model cannot run from an ONNX export (backends onnx and openvino)."""

    def _onnx_graph(self, packed: bool = False) -> str:
        """The exported (cached) ONNX graph of this model; exported here on first use.

        The ONNX backend runs ONNX Runtime's fused graph; OpenVINO reads the plain export and fuses itself,
        the packed one (``packed``: position and segment ids as inputs) where the encoder allows it.
        """
        from bgekit.inference.onnx_backend import export_onnx

        self._check_onnx()
        fingerprint = file_fingerprint(self.folder)[:16]
        return export_onnx(
            self.folder,
            self.onnx_task,
            None if self.backend == "openvino" else self.quantization,  # OpenVINO quantises its own IR
            fingerprint,
            fuse=self.backend != "openvino",
            packed=packed,
        )

    def _onnx_runner(self) -> Any:
        from bgekit.inference.onnx_backend import OnnxRunner

        return OnnxRunner(self._onnx_graph(), self.onnx_task)

    def _openvino_runner(self) -> Any:
        from bgekit.inference.openvino_backend import (
            DYNAMIC_GROUP,
            OpenVinoRunner,
            int8_weights_graph,
            require_openvino,
        )

        require_openvino()  # before a slow export that would be of no use
        from bgekit.inference.packing import position_offset

        config = getattr(self, "config", None)  # the config the model class loaded (an embedder's)
        offset = None
        if self.onnx_task == "feature-extraction" and config is not None:  # a classifier is never packed
            offset = position_offset(config)
        group = None
        if self.quantization == "int8-static":
            graph = self._calibrated_openvino_graph()
        else:
            graph = self._onnx_graph(packed=offset is not None)
        if self.quantization == "int8":
            graph, group = int8_weights_graph(graph), DYNAMIC_GROUP
        return OpenVinoRunner(graph, self.onnx_task, self.dtype, position_offset=offset, dynamic_group=group)

    def _calibrated_graph(self, backend: str) -> str:
        """Where ``bgekit quantize --backend BACKEND`` writes its static int8 graph for these weights."""
        from bgekit.inference.onnx_backend import calibrated_graph_name

        name = calibrated_graph_name(file_fingerprint(self.folder)[:16], self.onnx_task, backend)
        return os.path.join(self.folder, "onnx", name)

    def _calibrated_backends(self) -> tuple[str, ...]:
        """The backends this model folder holds a ``bgekit quantize`` static int8 graph for."""
        return tuple(b for b in ("onnx", "openvino") if os.path.isfile(self._calibrated_graph(b)))

    def _calibrated_openvino_graph(self) -> str:
        """The int8 OpenVINO IR ``bgekit quantize --backend openvino`` wrote beside these weights."""
        self._check_onnx()
        graph = self._calibrated_graph("openvino")
        if not os.path.isfile(graph):
            raise ConfigError(
                f"quantization='int8-static' with backend='openvino' needs a calibrated graph at {graph!r} "
                "(for these weights); make one with `bgekit quantize --backend openvino --model ... "
                f"{'--corpus' if self.onnx_task == 'feature-extraction' else '--pairs'} ... --out ...` and load "
                "the folder it writes"
            )
        return graph

    def set_streams(self, streams: int) -> None:
        """Let ``streams`` calls of this model run at once from different threads, the CPU threads split
        between them (``backend="openvino"`` only; a server's ``--streams``).

        One stream (the default) gives a call every thread, the fastest single call; more streams give
        more throughput when many small calls come at once.

        Raises:
            ConfigError: another backend, several devices, or ``streams`` outside 1..threads.

        Example:
            >>> model = Embedder("BAAI/bge-small-en-v1.5", backend="openvino")   # doctest: +SKIP
            >>> model.set_streams(2)                                               # doctest: +SKIP
        """
        if self.backend != "openvino" or len(self.devices) > 1:
            if streams == 1:
                return
            raise ConfigError(
                f"streams={streams!r} needs backend='openvino' on one device; this {type(self).__name__} "
                f"runs backend={self.backend!r} on {len(self.devices)} device(s)"
            )
        self._load_model().set_streams(streams)

    # ------------------------------------------------------------------------------------ worker pool
    def _runtime_kwargs(self) -> dict[str, Any]:
        """The runtime arguments a worker's copy is built with (each worker resolves ``dtype`` itself)."""
        return dict(
            dtype=self._requested_dtype,
            batch_size=self.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=False,
            trust_remote_code=self.trust_remote_code,
            backend=self.backend,
            quantization=self.quantization,
        )

    def _worker_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _get_pool(self) -> DevicePool:
        if self._pool is None or self._pool.closed:
            if self.backend in GRAPH_BACKENDS:
                self._onnx_graph()  # exported once here, not by every worker at the same time
            self._pool = DevicePool(
                _ModelFactory(type(self), self.folder, self._worker_kwargs()),
                self.devices,
                timeout=self.worker_timeout,
            )
        return self._pool

    def _map_split(
        self, method: str, count: int, arguments: Callable[[int, int], tuple[Any, ...]]
    ) -> list[Any]:
        """Run ``method`` on the workers over ``count`` items split into even ranges (four per device);
        ``arguments(start, end)`` gives one call's arguments. Returns the parts in input order."""
        ranges = split_evenly(count, len(self.devices) * 4)
        return self._get_pool().map(method, [arguments(a, b) for a, b in ranges])

    def close(self) -> None:
        """Stop worker processes, if any (also done at exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self: _Model) -> _Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- saving
    def _saved_settings(self) -> dict[str, Any]:
        """The settings written to ``bgekit.json`` (a dtype nobody asked for is left out)."""
        settings: dict[str, Any] = self.settings.to_dict()
        if settings.get("dtype") is None:
            settings.pop("dtype", None)
        return settings

    def _save_extra_files(self, path: str) -> None:
        """Write files beside the weights that this kind of model needs (heads)."""

    def save_pretrained(self, path: str) -> None:
        """Save weights (safetensors), tokenizer and ``bgekit.json`` so the model reloads from ``path`` as is.

        Example:
            >>> model.save_pretrained("my-model/")   # doctest: +SKIP
        """
        if self.backend != "torch":
            raise ConfigError(
                "save_pretrained needs backend='torch' (the ONNX graph is a cache, not a checkpoint)"
            )
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        settings = self._saved_settings()
        self._save_extra_files(path)
        write_saved_settings(path, self.settings_section, settings)

    @staticmethod
    def _digest(parts: list[str], adapter: str | None = None) -> str:
        """The 16-hex-digit fingerprint of ``parts`` (each subclass lists what changes its outputs) and of
        the files of ``adapter``, a PEFT adapter folder merged into the weights, when there is one."""
        if adapter and os.path.isdir(adapter):
            parts = [*parts, file_fingerprint(adapter)]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.encode())
        return digest.hexdigest()[:16]

    def _repr_fields(self) -> dict[str, Any]:
        """What ``repr`` shows besides the name and the dtype and devices every model shows."""
        return {}

    def __repr__(self) -> str:
        fields = {**self._repr_fields(), "dtype": self.dtype, "devices": self.devices}
        shown = ", ".join(f"{key}={value!r}" for key, value in fields.items())
        return f"{self.settings_section.capitalize()}({self.name_or_path!r}, {shown})"


def _build_candidate(
    cls: type[DeviceModel],
    name_or_path: str,
    arguments: dict[str, Any],
    device: str,
    backend: str,
    dtype: str,
    quantization: str | None = None,
) -> DeviceModel:
    """One ``backend="auto"`` candidate (module level: it may be built in a child process)."""
    return cls(
        name_or_path,
        **arguments,
        device=device,
        backend=backend,
        dtype=dtype,
        quantization=quantization,
        show_progress=False,
    )


def _tune_outputs(model: DeviceModel, texts: list[str]) -> Any:
    return model._tune_outputs(texts)


def file_fingerprint(folder: str, chunk: int = 1 << 20) -> str:
    """Hash of a model folder's files (names, sizes, first and last ``chunk`` bytes), sub-folders included."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            # onnx/ holds bgekit's own exports of these weights: not part of the model's identity
            if rel.startswith((".", "onnx" + os.sep)) or name.endswith((".md", ".lock")):
                continue
            size = os.path.getsize(path)
            digest.update(f"{rel}:{size}".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(chunk))
                if size > 2 * chunk:
                    handle.seek(-chunk, os.SEEK_END)
                    digest.update(handle.read(chunk))
    return digest.hexdigest()


def graph_fingerprint(graph: str) -> str:
    """What identifies one written graph (and an OpenVINO ``.xml``'s ``.bin`` beside it): names, sizes and
    modification times. Writing it again (``bgekit quantize``) changes it; copying with its times does not."""
    digest = hashlib.sha256()
    for path in (graph, os.path.splitext(graph)[0] + ".bin" if graph.endswith(".xml") else None):
        if path is not None and os.path.isfile(path):
            stat = os.stat(path)
            digest.update(f"{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def check_adapter_folder(adapter: Any, argument: str) -> str | None:
    """``adapter`` as an absolute path to a PEFT adapter folder, or ``None``; ModelLoadError naming
    ``argument`` when the folder holds no ``adapter_config.json``."""
    if adapter is None:
        return None
    path = os.path.abspath(os.path.expanduser(os.fspath(adapter)))
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ModelLoadError(
            f"{argument}={adapter!r} is not a PEFT adapter folder (expected adapter_config.json and "
            "adapter_model.safetensors in it)"
        )
    return path


def merge_adapter(model: Any, adapter: str, argument: str = "adapter") -> Any:
    """Apply a PEFT (LoRA) adapter and merge it into the weights, so inference runs at full speed.

    ``argument`` names the keyword the user passed the adapter as (``adapter`` or ``peft_path``).
    """
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ConfigError(
            f"{argument}={adapter!r} needs the peft package: pip install 'bgekit[train]' (or pip install peft)"
        ) from exc
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"could not apply the adapter in {adapter!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return merged.eval()
