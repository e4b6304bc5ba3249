"""``backend="auto"``: the fastest full-quality way to run a model on this CPU, measured once and cached.

Which path is fastest depends on the CPU and the model: ONNX Runtime's fused fp32 graph wins on CPUs with
AVX2 only, PyTorch or OpenVINO bf16 on CPUs with AMX, and a model's size shifts the balance. Flags cannot answer it
(a virtual machine may hide them), so ``backend="auto"`` builds the model on each candidate path, encodes
two fixed samples with each, query-sized texts and passage-sized ones, and keeps the path whose slower
side is fastest (the highest of its two rates as a share of the best rate on that sample) among those
whose outputs stay within ``MIN_COSINE`` of PyTorch fp32: a path that wins on passages but loses on queries
is not chosen over one that is close to the best on both. Each timed pass meets batch shapes the model
has not run before (its texts are a word longer each pass), as a stream of real texts does: some graphs
(OpenVINO's static int8) compile kernels for each new shape, which a repeated sample would hide.

Candidates: PyTorch in the model's dtype, ONNX Runtime fp32 (encoder models), OpenVINO in the same dtypes
when it is installed (``bgekit[openvino]``), and with ``dtype="auto"`` bf16 on PyTorch and OpenVINO where
this CPU multiplies bf16 fast. OpenVINO's dynamic int8 (int8 weights, inputs quantised per group of one
token at run time; needs NNCF, also in ``bgekit[openvino]``) is a candidate in the same dtypes, and is kept only where it qualifies like any other.
ONNX Runtime's dynamic int8 is not a candidate: one scale per tensor moves embeddings to 0.98-0.99 cosine,
which is not full quality (ask for it with ``quantization="int8"``).

The candidates are measured in a fresh child process, so the process that loads the model keeps none of
their memory, thread pools or runtime state (measured in place, it kept twice the chosen path's peak
memory).

The choice is cached per machine (CPU model and flags, threads, torch, ONNX Runtime and OpenVINO versions), model
files and request in ``$BGEKIT_CACHE_DIR/auto/`` (default ``~/.cache/bgekit/auto/``); later loads read it
and measure nothing. The model reports it as ``model.auto_choice``.

Example:
    >>> model = Embedder("BAAI/bge-small-en-v1.5", device="cpu", backend="auto")   # doctest: +SKIP
    >>> print(model.auto_choice.reason)                                          # doctest: +SKIP
    onnx/fp32 at 402.5 queries/s, 61.0 passages/s (score 1.00); torch/bf16 371.2 queries/s, ...
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bgekit.errors import BgekitError, ModelLoadError
from bgekit.io import atomic_open

logger = logging.getLogger(__name__)

MIN_COSINE = 0.995
"""A candidate qualifies when every output keeps at least this cosine to PyTorch fp32."""

CACHE_VERSION = 2

ISOLATE = True
"""Measure the candidates in a fresh child process (the default); ``False`` measures in this process, as it
also does where the model's arguments cannot be sent to a child."""
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

_SAMPLE_TEXT = (
    "Retrieval systems turn a question into a vector and look for the passages whose vectors lie closest "
    "to it. The passages come from manuals, papers, support tickets and web pages, and they differ in "
    "length, vocabulary and style. A good embedding model places a short question near the paragraph that "
    "answers it even when the two share few words, and a reranker then reads each candidate together with "
    "the question to order the best few. Speed matters because a corpus is encoded once but grows every "
    "day, and queries arrive one at a time from people who wait for the answer. Quality matters more: a "
    "faster model that misses the right passage costs more than it saves."
)
_SAMPLE = _SAMPLE_TEXT.split(" ")
SAMPLES = {
    "queries": ((6, 9, 12, 15, 18, 21, 24, 30, 36, 48), 80),
    "passages": ((48, 96, 160, 224, 288, 352), 24),
}
"""Each sample's lengths in words (cycled) and its number of texts: query-sized and passage-sized."""

PASSES = 3
"""Timed passes per sample (the best counts), each a word longer per text than the one before."""


def sample_texts(kind: str = "queries", shift: int = 0) -> list[str]:
    """The fixed texts every candidate encodes for one sample (``"queries"`` or ``"passages"``), each one
    different; ``shift`` adds words to every text (a pass's new batch shapes).

    Example:
        >>> [len(text.split()) for text in sample_texts("passages")][:6]
        [48, 96, 160, 224, 288, 352]
        >>> len(sample_texts("queries", shift=2)[0].split())
        8
    """
    lengths, count = SAMPLES[kind]
    out = []
    for i in range(count):
        words = lengths[i % len(lengths)] + shift
        start = (7 * i) % len(_SAMPLE)
        out.append(" ".join((_SAMPLE * (words // len(_SAMPLE) + 2))[start : start + words]))
    return out


@dataclass
class AutoChoice:
    """What ``backend="auto"`` chose and why.

    Attributes:
        backend: ``"torch"``, ``"onnx"`` or ``"openvino"``.
        dtype: the dtype that runs (``"fp32"`` or ``"bf16"``).
        quantization: ``"int8-static"`` when the fastest path was a graph ``bgekit quantize`` calibrated
            for this model (a candidate only where the model folder holds one), ``"int8"`` when it was
            OpenVINO's dynamic int8, else ``None``.
        rates: texts per second of each candidate (``"torch/fp32"``, ...) on both samples together.
        sample_rates: texts per second of each candidate on each sample (``"queries"``, ``"passages"``).
        scores: each candidate's worse share of the best rate on a sample (1.0: fastest on both); the
            qualifying candidate with the highest is chosen.
        cosines: each candidate's minimum cosine to the reference outputs.
        skipped: candidates that could not run here, with the reason.
        reason: one line saying what was chosen against what.
        cache_path: where the choice is cached.
        cached: whether this load read the cache instead of measuring.

    Example:
        >>> AutoChoice("torch", "bf16", rates={"torch/bf16": 240.0, "torch/fp32": 90.0}).backend
        'torch'
    """

    backend: str
    dtype: str
    quantization: str | None = None
    rates: dict[str, float] = field(default_factory=dict)
    sample_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    cache_path: str = ""
    cached: bool = False


def cache_dir() -> str:
    """Where choices are cached: ``$BGEKIT_CACHE_DIR/auto`` or ``~/.cache/bgekit/auto``.

    Example:
        >>> cache_dir().endswith("auto")
        True
    """
    root = os.environ.get("BGEKIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bgekit")
    return os.path.join(root, "auto")


def machine_key() -> dict[str, Any]:
    """What makes a measurement valid on another day: the CPU, its flags, threads and runtime versions.

    Example:
        >>> sorted(machine_key())
        ['cpu', 'flags', 'onnxruntime', 'openvino', 'threads', 'torch']
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "flags": [f for f in _FLAGS if f in flags],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def candidates(
    default_dtype: str,
    requested_dtype: str | None,
    bf16_fast: bool,
    openvino: bool = False,
    calibrated: tuple[str, ...] = (),
    openvino_int8: bool = False,
) -> list[tuple[str, ...]]:
    """The (backend, dtype[, quantization]) paths to measure for a CPU model.

    ``dtype`` not given: the model's own dtype on PyTorch, and ONNX fp32 when that dtype is fp32.
    ``dtype="auto"``: PyTorch fp32, PyTorch bf16 where ``bf16_fast``, ONNX fp32. An explicit dtype: PyTorch
    in it, and ONNX when it is fp32. With ``openvino`` (the package is installed) OpenVINO runs in each
    dtype PyTorch does. ``calibrated`` names the backends the model folder holds a static int8 graph for
    (``bgekit quantize``): each is a candidate too (ONNX Runtime's in fp32; OpenVINO's with its unquantised
    MatMuls in each dtype OpenVINO runs). ``openvino_int8`` (NNCF is installed too) adds OpenVINO's
    dynamic int8 in each dtype OpenVINO runs.

    Example:
        >>> candidates("fp32", None, bf16_fast=True)
        [('torch', 'fp32'), ('onnx', 'fp32')]
        >>> candidates("fp32", "auto", bf16_fast=True)
        [('torch', 'fp32'), ('torch', 'bf16'), ('onnx', 'fp32')]
        >>> candidates("fp32", "auto", bf16_fast=True, openvino=True)[3:]
        [('openvino', 'fp32'), ('openvino', 'bf16')]
        >>> candidates("fp32", "auto", bf16_fast=True, openvino=True, calibrated=("openvino",))[-1]
        ('openvino', 'bf16', 'int8-static')
        >>> candidates("fp32", None, bf16_fast=False, openvino=True, openvino_int8=True)[-1]
        ('openvino', 'fp32', 'int8')
    """
    if requested_dtype == "auto":
        dtypes = ["fp32"] + (["bf16"] if bf16_fast else [])
    else:
        dtype = requested_dtype or default_dtype
        dtypes = ["fp32" if dtype == "fp16" else dtype]  # fp16 runs as fp32 on a CPU
    paths: list[tuple[str, ...]] = [("torch", d) for d in dtypes]
    if "fp32" in dtypes:
        paths.append(("onnx", "fp32"))
    if openvino:
        paths += [("openvino", d) for d in dtypes if d in ("fp32", "bf16")]
    if "onnx" in calibrated and "fp32" in dtypes:
        paths.append(("onnx", "fp32", "int8-static"))
    if openvino and "openvino" in calibrated:
        paths += [("openvino", d, "int8-static") for d in dtypes if d in ("fp32", "bf16")]
    if openvino and openvino_int8:
        paths += [("openvino", d, "int8") for d in dtypes if d in ("fp32", "bf16")]
    return paths


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:  # scores: one vector, compared as such (centred: scale and offset do not hide drift)
        a, b = (a - a.mean())[None], (b - b.mean())[None]
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return float(cos.min())


def measure(
    build: Callable[[str, str], Any],
    run: Callable[[Any, list[str]], np.ndarray],
    path: tuple[str, ...],
) -> tuple[dict[str, float], np.ndarray]:
    """Texts per second of one candidate on each sample (best of ``PASSES`` passes, each on new batch
    shapes, after a warm-up on others) and its outputs on the last pass of each, concatenated.

    Example:
        >>> rates, out = measure(lambda b, d: None, lambda m, t: [[1.0]] * len(t), ("torch", "fp32"))
        >>> sorted(rates), out.shape
        (['passages', 'queries'], (104, 1))
    """
    model = build(*path)
    try:
        run(model, sample_texts("queries", shift=PASSES + 1)[:16])
        rates, outputs = {}, []
        for kind in SAMPLES:
            best, last = float("inf"), None
            for shift in range(PASSES):
                texts = sample_texts(kind, shift)
                started = time.perf_counter()
                last = run(model, texts)
                best = min(best, time.perf_counter() - started)
            rates[kind] = len(texts) / best
            outputs.append(np.asarray(last))
        return rates, np.concatenate(outputs)
    finally:
        close = getattr(model, "close", None)
        if close is not None:
            close()
        del model


def choose(
    key: dict[str, Any],
    paths: list[tuple[str, ...]],
    build: Callable[..., Any],
    run: Callable[[Any, list[str]], np.ndarray],
) -> AutoChoice:
    """The fastest qualifying path among ``paths``, from the cache or measured now (and cached).

    Args:
        key: what identifies the model and the request (model files, class, settings); the machine is
            added here.
        paths: candidate (backend, dtype[, quantization]) tuples; the first is the reference the others'
            quality is measured against, and the fallback when no other can run.
        build: makes the model on one path (a module-level function or a ``functools.partial`` of one, so
            the child process that measures can rebuild it; see ``ISOLATE``).
        run: encodes (or scores) texts with a built model, returning an array.
    """
    full = {"version": CACHE_VERSION, "machine": machine_key(), **key, "paths": [list(p) for p in paths]}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir(), f"{digest}.json")
    cached = _read_cache(path)
    if cached is not None:
        cached.cached, cached.cache_path = True, path
        return cached
    if len(paths) == 1:
        only = paths[0]
        return AutoChoice(only[0], only[1], reason=f"{only[0]}/{only[1]}: the only candidate", cache_path="")
    job = _child_job(paths, build, run)
    choice = _measure_all(paths, build, run) if job is None else _measure_isolated(job, paths, build, run)
    choice.cache_path = path
    for name in choice.rates:
        shares = [rates[name] / max(rates.values()) for rates in choice.sample_rates.values()]
        choice.scores[name] = round(min(shares), 4)
    qualifying = [n for n in choice.rates if choice.cosines[n] >= MIN_COSINE]
    best = max(qualifying, key=lambda n: (choice.scores[n], choice.rates[n]))
    choice.backend, choice.dtype, *quantization = best.split("/")
    choice.quantization = quantization[0] if quantization else None

    def rates_of(name: str) -> str:
        return ", ".join(f"{rates[name]:.1f} {kind}/s" for kind, rates in choice.sample_rates.items())

    others = [
        f"{n} {rates_of(n)} (score {choice.scores[n]:.2f}, cosine {choice.cosines[n]:.4f})"
        for n in choice.rates
        if n != best
    ]
    others += [f"{n} could not run: {why}" for n, why in choice.skipped.items()]
    choice.reason = f"{best} at {rates_of(best)} (score {choice.scores[best]:.2f}); " + "; ".join(others)
    _write_cache(path, choice)
    logger.info("backend='auto' chose %s (%s)", best, choice.reason)
    return choice


def _measure_all(
    paths: list[tuple[str, ...]],
    build: Callable[..., Any],
    run: Callable[[Any, list[str]], np.ndarray],
) -> AutoChoice:
    """Every candidate's rates and cosines (the choice among them is made by :func:`choose`)."""
    choice = AutoChoice(paths[0][0], paths[0][1])
    reference: np.ndarray | None = None
    for candidate in paths:
        name = "/".join(candidate)
        try:
            rates, outputs = measure(build, run, candidate)
        except (BgekitError, ImportError) as exc:  # e.g. no onnxruntime, or a model ONNX cannot run
            if reference is None:
                raise
            choice.skipped[name] = str(exc).splitlines()[0][:200]
            continue
        if reference is None:
            reference = outputs
        count = sum(SAMPLES[kind][1] for kind in rates)
        choice.rates[name] = round(count / sum(SAMPLES[kind][1] / rate for kind, rate in rates.items()), 2)
        for kind, rate in rates.items():
            choice.sample_rates.setdefault(kind, {})[name] = round(rate, 2)
        choice.cosines[name] = round(_min_cosine(outputs, reference), 6)
    return choice


def _child_job(
    paths: list[tuple[str, ...]], build: Callable[..., Any], run: Callable[..., Any]
) -> bytes | None:
    """The measurement as a child process gets it (pickled once), or ``None`` to measure in this process."""
    if not ISOLATE or not sys.executable:
        return None
    try:
        return pickle.dumps((torch.get_num_threads(), paths, build, run))
    except Exception as exc:  # a closure, or an argument that cannot be sent (an object, not a path)
        logger.info("backend='auto' measures in this process: its arguments cannot go to a child (%s)", exc)
        return None


def _measure_isolated(
    job: bytes,
    paths: list[tuple[str, ...]],
    build: Callable[..., Any],
    run: Callable[[Any, list[str]], np.ndarray],
) -> AutoChoice:
    """:func:`_measure_all` in a fresh Python process with this process's thread count and ``sys.path``.

    A new interpreter (``python -c`` running :func:`_child`), not ``multiprocessing``: that would import
    the caller's ``__main__`` again in the child, and a script without an ``if __name__ == "__main__"``
    guard would run twice. An error while measuring comes back and is raised here as it would be in place;
    a model class the child cannot import (one defined in ``__main__``) is measured in this process.
    """
    with tempfile.TemporaryDirectory(prefix="bgekit-auto-") as tmp:
        request, answer = os.path.join(tmp, "request.pkl"), os.path.join(tmp, "answer.pkl")
        with open(request, "wb") as handle:
            pickle.dump({"sys_path": list(sys.path), "job": job}, handle)
        # -c, not -m: bgekit's package imports this module before runpy would run it as __main__ (a
        # RuntimeWarning, and two copies of the module in the child)
        command = [sys.executable, "-c", _CHILD_CODE, request, answer]
        done = subprocess.run(command, check=False)
        if not os.path.isfile(answer):
            raise ModelLoadError(
                f"backend='auto': the process measuring the candidates ended without an answer (exit status "
                f"{done.returncode}: killed, or out of memory; its error, if any, is above); name a backend "
                "instead, e.g. backend='torch'"
            )
        with open(answer, "rb") as handle:
            outcome, value = pickle.load(handle)
    if outcome == "unpicklable":
        logger.info(
            "backend='auto' measures in this process: the child could not rebuild the model (%s)", value
        )
        return _measure_all(paths, build, run)
    if outcome == "error":
        raise value
    return value  # type: ignore[no-any-return]


_CHILD_CODE = "import sys; from bgekit.inference.autotune import _child; _child(sys.argv[1], sys.argv[2])"
"""What the measuring process runs (``python -c``), with the request and answer paths as arguments."""


def _child(request: str, answer: str) -> None:
    """The measuring process: read the job, measure, write back ``(outcome, value)``."""
    with open(request, "rb") as handle:
        payload = pickle.load(handle)
    sys.path[:] = payload["sys_path"]
    result: tuple[str, Any]
    try:
        threads, paths, build, run = pickle.loads(payload["job"])
    except Exception as exc:  # e.g. a class defined in the caller's __main__
        result = ("unpicklable", f"{type(exc).__name__}: {exc}")
    else:
        torch.set_num_threads(threads)
        try:
            result = ("ok", _measure_all(paths, build, run))
        except Exception as exc:
            result = (
                "error",
                exc if _picklable(exc) else ModelLoadError(f"backend='auto' could not measure: {exc!r}"),
            )
    with atomic_open(answer, "wb") as handle:
        pickle.dump(result, handle)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _read_cache(path: str) -> AutoChoice | None:
    """The cached choice, or ``None`` when there is none or it cannot be read (it is measured again)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return AutoChoice(**{k: v for k, v in data.items() if k in AutoChoice.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring the unreadable backend='auto' cache %s (%s); measuring again", path, exc)
        return None


def _write_cache(path: str, choice: AutoChoice) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "w", encoding="utf-8") as handle:
            json.dump(
                {k: v for k, v in asdict(choice).items() if k not in ("cached", "cache_path")},
                handle,
                indent=1,
            )
    except OSError as exc:  # a read-only home: the choice still holds for this process
        logger.warning("could not cache the backend='auto' choice at %s: %s", path, exc)
