"""Encoding throughput and peak memory: bgekit vs sentence-transformers vs FlagEmbedding, one run.

Same model (the default all-MiniLM-L6-v2 unless --model), same SciFact texts, same max length, same
thread count. Each path runs in its own process (clean peak memory). Prints texts/second, the ratio to
sentence-transformers fp32, peak memory, the achieved model FLOP/s as a fraction of this machine's measured
matmul peak, and the quality of each fast path (min cosine to bgekit fp32; SciFact test nDCG@10 with exact
search when encoding documents).

Peers' fast paths run beside them, each from its own virtual environment under .bench/ (built on first use;
one that cannot be installed is skipped with a line saying why): sentence-transformers ``backend="onnx"``
fp32 and its dynamic int8 graph (``export_dynamic_quantized_onnx_model``, config picked from this CPU's
flags), ``backend="openvino"`` fp32 (precision hint f32), with OpenVINO's default precision (``-default``: bf16 on
CPUs with AMX or AVX512-BF16) and OpenVINO static int8 (ST's ``export_static_quantized_openvino_model``
with its calibration set replaced by local SciFact texts that are not timed), and FastEmbed on the graph
sentence-transformers exported. bgekit's ``bgekit-onnx-int8-static`` (ONNX Runtime) and
``bgekit-openvino-int8-static`` (NNCF for OpenVINO, ``dtype="auto"`` around the int8 MatMuls) are calibrated
on the same texts by ``calibrate_int8`` (``bgekit quantize``), which keeps the fewest MatMuls unquantised
that hold cosine >= 0.995 on held-out texts;
``bgekit-openvino-fp32`` and ``-bf16`` run bgekit's engine on OpenVINO (``backend="openvino"``), and
``bgekit-openvino-int8`` its dynamic int8 (int8 weights, inputs quantised per group at run time, no
calibration; ``dtype="auto"`` around the int8 MatMuls). ``--passes N`` times each path N times over
all texts and keeps its fastest pass (the steady state of a long-running process, whose batch shapes
have been met before: graphs that compile kernels per shape gain most); the default is one cold pass. Each
path is shown against sentence-transformers fp32 and against the fastest peer path of the run.
``bgekit-auto`` is ``backend="auto", dtype="auto"`` (its one-off measurement at load is not timed), on the
folder ``bgekit-openvino-int8-static`` calibrated when that path ran first (``auto`` then measures the
calibrated graph beside the other paths), else on the model itself; the last
line says what it chose and how fast it runs against the fastest bgekit path at cosine >= 0.995 to fp32.

    python benchmarks/encode.py                       # 5,183 documents, max length 512, 2 threads
    python benchmarks/encode.py --what queries        # the 1,109 SciFact queries
    python benchmarks/encode.py --what queries --passes 3   # the same, best of three passes
    python benchmarks/encode.py --limit 500 --paths st-fp32 bgekit-fp32
    python benchmarks/encode.py --limit 64 --paths st-onnx-fp32 fastembed-onnx-fp32 bgekit-fp32
    python benchmarks/encode.py --device cuda         # GPU: against sentence-transformers fp16 (SDPA)

On a GPU (``--device cuda``) the baseline is sentence-transformers fp16 with SDPA attention, peak memory is
``torch.cuda.max_memory_allocated``, and the peaks are the card's fp32/fp16/bf16 matmul throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    PeerInstallError,
    arithmetic_of,
    best_peaks,
    default_model_path,
    describe_device,
    describe_peaks,
    encoder_flops,
    load_scifact,
    measure_peaks,
    peak_rss_mb,
    print_table,
    run_worker,
)
from _peers import CALIBRATION_SAMPLES, ENCODE_PEERS, run_peer  # noqa: E402

PATHS = [
    "st-fp32",
    "flag-fp32",
    *ENCODE_PEERS,
    "bgekit-fp32",
    "bgekit-bf16",
    "bgekit-onnx-fp32",
    "bgekit-onnx-int8",
    "bgekit-onnx-int8-static",
    "bgekit-openvino-fp32",
    "bgekit-openvino-bf16",
    "bgekit-openvino-int8",
    "bgekit-openvino-int8-static",
    "bgekit-auto",
]
STATIC_INT8 = {"bgekit-onnx-int8-static": "onnx", "bgekit-openvino-int8-static": "openvino"}
GPU_PATHS = ["st-fp16", "flag-fp16", "bgekit-fp32", "bgekit-fp16", "bgekit-bf16"]
ALL_PATHS = list(dict.fromkeys(PATHS + GPU_PATHS))
REFERENCE = "bgekit-fp32"


def baseline_for(device: str) -> str:
    return "st-fp16" if device.startswith("cuda") else "st-fp32"


def texts_for(what: str, limit: int | None) -> tuple[list[str], list[dict], list[str]]:
    """(plain texts, bgekit corpus items or query strings, ids) for documents or queries."""
    corpus, queries, _ = load_scifact()
    if what == "docs":
        rows = corpus[:limit] if limit else corpus
        plain = [f"{r['title']} {r['text']}".strip() for r in rows]
        return plain, [{"title": r["title"], "text": r["text"]} for r in rows], [str(r["_id"]) for r in rows]
    rows = queries[:limit] if limit else queries
    return [r["text"] for r in rows], [r["text"] for r in rows], [str(r["_id"]) for r in rows]


def calibration_texts(what: str, limit: int | None) -> tuple[list[str], str]:
    """Texts for the static int8 paths' calibration: the documents after ``--limit`` where enough are left
    (never timed), else (all documents timed) a seeded sample of them, as a user calibrates on a sample of
    the corpus they then encode."""
    corpus, queries, qrels = load_scifact()
    if what == "docs" and limit and len(corpus) - limit >= CALIBRATION_SAMPLES:
        rows = corpus[limit : limit + CALIBRATION_SAMPLES]
        return [f"{r['title']} {r['text']}".strip() for r in rows], "SciFact documents after --limit"
    if what == "queries" and limit and len(queries) - limit >= CALIBRATION_SAMPLES:
        return [
            r["text"] for r in queries[limit : limit + CALIBRATION_SAMPLES]
        ], "SciFact queries after --limit"
    if what == "queries":
        rows = corpus[:CALIBRATION_SAMPLES]
        return [f"{r['title']} {r['text']}".strip() for r in rows], "SciFact documents (queries mode)"
    # every document is timed: a seeded sample of them, as `bgekit quantize --corpus` takes one from the
    # corpus it will encode (calibration is not timed; the held-out check uses texts it did not see)
    rows = random.Random(0).sample(corpus, CALIBRATION_SAMPLES)
    return [f"{r['title']} {r['text']}".strip() for r in rows], "a seeded sample of the SciFact documents"


def calibration_queries(what: str, limit: int | None) -> tuple[list[str], str]:
    """Queries bgekit's static int8 paths also calibrate on and check as queries (``queries=``): SciFact
    queries outside the test split (in queries mode with ``--limit``, those after it), none of the
    calibration texts. In docs mode they are never encoded; in
    queries mode every query is timed, so these are among the timed ones and the run prints the minimum
    cosine over the queries outside this sample beside the table."""
    _, queries, qrels = load_scifact()
    if what == "queries" and limit:  # the queries after --limit are not timed
        spare = [q["text"] for q in queries[limit:]]
    else:
        spare = [q["text"] for q in queries if str(q["_id"]) not in qrels]
    taken = set(calibration_texts(what, limit)[0])
    rest = [q for q in spare if q not in taken]
    return rest[:CALIBRATION_SAMPLES], "SciFact non-test queries"


def test_queries() -> tuple[list[str], list[str]]:
    _, queries, qrels = load_scifact()
    rows = [q for q in queries if str(q["_id"]) in qrels]
    return [q["text"] for q in rows], [str(q["_id"]) for q in rows]


def worker(args: argparse.Namespace) -> None:
    name, length, device = args.worker, args.max_length, args.device
    if name in ENCODE_PEERS:
        peer_worker(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    plain, items, _ = texts_for(args.what, args.limit)
    extra_queries, _ = test_queries() if args.what == "docs" else ([], [])
    if name in STATIC_INT8:
        model = static_int8_embedder(args, STATIC_INT8[name])
        if model is None:  # --prepare: calibrated and saved, nothing to time
            print("{}")
            return

        def encode(texts: list, queries: bool = False) -> np.ndarray:
            if queries or args.what == "queries":
                return model.encode_queries(texts)
            return model.encode_corpus(texts)
    elif name.startswith("st-"):
        from sentence_transformers import SentenceTransformer

        # the GPU baseline: fp16 weights and SDPA attention, as sentence-transformers' docs advise
        fp16 = {"torch_dtype": torch.float16, "attn_implementation": "sdpa"} if name == "st-fp16" else None
        st = SentenceTransformer(args.model, device=device, model_kwargs=fp16)
        st.max_seq_length = length

        def encode(texts: list, queries: bool = False) -> np.ndarray:
            plain_texts = texts if queries or args.what == "queries" else plain_of(texts)
            return st.encode(plain_texts, batch_size=32, normalize_embeddings=True)
    elif name.startswith("flag-"):
        from FlagEmbedding import FlagModel

        flag = FlagModel(
            args.model,
            pooling_method="mean",
            use_fp16=name == "flag-fp16",
            devices=[device],
            query_max_length=length,
            passage_max_length=length,
        )

        def encode(texts: list, queries: bool = False) -> np.ndarray:
            if queries or args.what == "queries":
                return flag.encode_queries(texts)
            return flag.encode_corpus(plain_of(texts))
    else:
        from bgekit import Embedder

        kwargs: dict = {
            "bgekit-fp32": {"dtype": "fp32"},
            "bgekit-fp16": {"dtype": "fp16"},
            "bgekit-bf16": {"dtype": "bf16"},
            "bgekit-onnx-fp32": {"backend": "onnx"},
            "bgekit-onnx-int8": {"quantization": "int8"},
            "bgekit-openvino-fp32": {"backend": "openvino", "dtype": "fp32"},
            "bgekit-openvino-bf16": {"backend": "openvino", "dtype": "bf16"},
            # int8 weights, inputs quantised per group at run time; bf16 around them where it is fast
            "bgekit-openvino-int8": {"backend": "openvino", "quantization": "int8", "dtype": "auto"},
            # chosen at load (not timed), from a measurement cached under .bench/auto-cache
            "bgekit-auto": {"backend": "auto", "dtype": "auto"},
        }[name]
        folder = args.model
        calibrated = static_int8_folder(args, "openvino")
        if name == "bgekit-auto" and os.path.isdir(calibrated):  # its int8 graph is a candidate too
            folder = calibrated
        model = Embedder(folder, device=device, query_max_length=length, passage_max_length=length, **kwargs)

        def encode(texts: list, queries: bool = False) -> np.ndarray:
            if queries or args.what == "queries":
                return model.encode_queries(texts)
            return model.encode_corpus(texts)

    encode(items[:16])  # warm-up: first-call allocations and lazy initialisation
    seconds, vectors = timed_passes(args.passes, encode, items)
    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    if extra_queries:
        np.save(args.out + ".queries.npy", np.asarray(encode(extra_queries, queries=True), dtype=np.float32))
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mb()
    chose = getattr(locals().get("model"), "auto_choice", None)
    chosen = None
    if chose is not None:
        chosen = (
            f"bgekit-{chose.dtype}" if chose.backend == "torch" else f"bgekit-{chose.backend}-{chose.dtype}"
        )
        if chose.quantization:  # a calibrated graph: named as its own path
            chosen = f"bgekit-{chose.backend}-{chose.quantization}"
    print(json.dumps({"seconds": seconds, "n": len(items), "peak_rss_mb": memory, "chose": chosen}))


def static_int8_folder(args: argparse.Namespace, backend: str) -> str:
    """Where the benchmark keeps the model calibrated for ``backend`` (under .bench/models/)."""
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ".bench",
        "models",
        "bgekit-int8-static" if backend == "onnx" else "bgekit-openvino-int8-static",
        f"{os.path.basename(args.model.rstrip('/'))}-{args.what}-{args.limit or 'all'}",
    )


def static_int8_embedder(args: argparse.Namespace, backend: str) -> Any:
    """bgekit's static int8 graph for ``backend``, calibrated (each run, untimed, into .bench/models/) on
    ``calibration_texts``."""
    from bgekit import Embedder
    from bgekit.inference.calibrate import calibrate_int8

    texts, _ = calibration_texts(args.what, args.limit)
    queries, _ = calibration_queries(args.what, args.limit)
    out = static_int8_folder(args, backend)
    if args.prepare:
        held_out = min(100, len(texts) // 3)
        report = calibrate_int8(
            args.model,
            texts,
            out,
            held_out=held_out,
            max_length=args.max_length,
            backend=backend,
            queries=queries if len(queries) >= 8 else None,
        )
        print(
            f"calibrated on {report.calibration_texts} texts and {report.calibration_queries} queries; "
            f"held-out min cosine {report.min_cosine:.5f} (queries {report.query_min_cosine}), "
            f"mean {report.mean_cosine:.5f}; unquantised: {', '.join(report.fp32_groups) or 'none'}",
            file=sys.stderr,
        )
        return None
    length = args.max_length
    runtime = {"backend": "openvino", "dtype": "auto"} if backend == "openvino" else {}
    return Embedder(
        out,
        device="cpu",
        quantization="int8-static",
        query_max_length=length,
        passage_max_length=length,
        **runtime,
    )


def peer_worker(args: argparse.Namespace) -> None:
    """A peer path in its own environment: prepare its graph (``--prepare``), or time it."""
    import _peers

    if args.prepare:
        calibration, _ = calibration_texts(args.what, args.limit)
        _peers.prepare(args.worker, args.model, calibration)
        print("{}")
        return
    plain, _, _ = texts_for(args.what, args.limit)
    extra_queries, _ = test_queries() if args.what == "docs" else ([], [])
    encode = _peers.load_encoder(args.worker, args.model, args.threads, args.max_length)
    encode(plain[:16])  # warm-up
    seconds, vectors = timed_passes(args.passes, encode, plain)
    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    if extra_queries:
        np.save(args.out + ".queries.npy", np.asarray(encode(extra_queries), dtype=np.float32))
    print(json.dumps({"seconds": seconds, "n": len(plain), "peak_rss_mb": peak_rss_mb()}))


def timed_passes(passes: int, encode: Any, items: list) -> tuple[float, Any]:
    """The fastest of ``passes`` timed passes over all of ``items`` (the later ones on batch shapes the
    path has run before: its steady state), and the vectors of the last."""
    best, vectors = float("inf"), None
    for _ in range(passes):
        start = time.perf_counter()
        vectors = encode(items)
        best = min(best, time.perf_counter() - start)
    return best, vectors


def plain_of(items: list) -> list[str]:
    return [f"{i['title']} {i['text']}".strip() if isinstance(i, dict) else i for i in items]


def model_flops(model_path: str, texts: list[str], max_length: int) -> float:
    """Forward FLOPs of the encoder over ``texts`` (see ``encoder_flops``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return encoder_flops(model_path, lengths)


def ndcg_at_10(
    doc_ids: list[str], corpus_vecs: np.ndarray, query_ids: list[str], query_vecs: np.ndarray
) -> float:
    from bgekit.evaluation.metrics import compute_metrics

    _, _, qrels = load_scifact()
    scores = query_vecs @ corpus_vecs.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}
    means, _ = compute_metrics({q: qrels[q] for q in query_ids}, run, [10])
    return means["ndcg_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--what", choices=["docs", "queries"], default="docs")
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison")
    parser.add_argument("--paths", nargs="+", default=None, choices=ALL_PATHS)
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="time each path N times over all texts and keep its fastest pass (default 1: one cold pass)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or default_model_path()
    gpu = args.device.startswith("cuda")
    args.paths = args.paths or (GPU_PATHS if gpu else PATHS)
    if gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device}: torch sees no CUDA device on this machine")
    if args.worker:
        worker(args)
        return

    plain, _, ids = texts_for(args.what, args.limit)
    flops = model_flops(args.model, plain, args.max_length)
    peaks = measure_peaks(args.threads, args.device)
    print(
        f"# encode benchmark: {len(plain)} SciFact {args.what}, max length {args.max_length}, "
        f"{args.threads} threads, device {describe_device(args.device)}, "
        f"{'one timed pass' if args.passes == 1 else f'best of {args.passes} timed passes'}, "
        f"model {os.path.basename(os.path.dirname(args.model))}"
    )
    print(
        f"# machine matmul peak (measured now): {describe_peaks(peaks)}; "
        f"model work {flops / 1e12:.2f} TFLOP\n"
    )
    results: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}
    query_vectors: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            out = os.path.join(tmp, f"{path}.npy")
            worker_args = [
                "--worker",
                path,
                "--out",
                out,
                "--model",
                args.model,
                "--what",
                args.what,
                "--max-length",
                str(args.max_length),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--passes",
                str(args.passes),
            ]
            if args.limit:
                worker_args += ["--limit", str(args.limit)]
            try:
                if path in ENCODE_PEERS:
                    results[path] = run_peer(
                        __file__, path, ENCODE_PEERS[path], worker_args[2:], args.threads
                    )
                else:
                    if path in STATIC_INT8:  # calibration is not timed, nor its memory
                        run_worker(__file__, [path, "--prepare", *worker_args[2:]], args.threads)
                    results[path] = run_worker(__file__, worker_args[1:], args.threads)
            except PeerInstallError as exc:
                print(f"[{path}] skipped: {exc}", file=sys.stderr)
                continue
            except RuntimeError as exc:
                print(f"[{path}] failed: {str(exc).splitlines()[-1]}", file=sys.stderr)
                continue
            vectors[path] = np.load(out)
            if os.path.exists(out + ".queries.npy"):
                query_vectors[path] = np.load(out + ".queries.npy")
            print(f"[{path}] {results[path]['seconds']:.1f}s", file=sys.stderr)
    if not results:
        sys.exit("no path ran")
    peaks = best_peaks(peaks, args.threads, args.device)
    print(f"# matmul peak, best of before/after: {describe_peaks(peaks)}")
    baseline = baseline_for(args.device)
    base = results.get(baseline, {}).get("seconds")
    # the claim is held against the fastest peer of this run, whichever library and arithmetic it uses
    peer_seconds = [r["seconds"] for p, r in results.items() if not p.startswith("bgekit-")]
    fastest_peer = min(peer_seconds) if peer_seconds else None
    ref = vectors.get(REFERENCE)
    test_q, test_ids = test_queries()
    rows = []
    for path, res in results.items():
        rate = res["n"] / res["seconds"]
        dtype = arithmetic_of(res.get("chose") or path, peaks)
        frac = flops / res["seconds"] / 1e9 / peaks[dtype]
        cos = f"{float((vectors[path] * ref).sum(1).min()):.5f}" if ref is not None else "-"
        ndcg = (
            f"{ndcg_at_10(ids, vectors[path], test_ids, query_vectors[path]):.4f}"
            if args.what == "docs" and path in query_vectors and not args.limit
            else "-"
        )
        rows.append(
            [
                path,
                f"{rate:.1f}",
                f"{base / res['seconds']:.2f}x" if base else "-",
                f"{fastest_peer / res['seconds']:.2f}x" if fastest_peer else "-",
                f"{res['peak_rss_mb']:.0f}",
                f"{flops / res['seconds'] / 1e9:.0f} ({frac:.0%} of {dtype} peak)",
                cos,
                ndcg,
            ]
        )
    auto_line = auto_summary(results, vectors, ref)
    print_table(
        [
            "path",
            f"{args.what}/s",
            f"vs {baseline}",
            "vs fastest peer",
            "GPU peak MiB" if gpu else "peak MiB",
            "model GFLOP/s",
            "min cos vs fp32",
            "nDCG@10",
        ],
        rows,
    )
    if auto_line:
        print(auto_line)
    # the paths that ran a static int8 graph: its own paths, and auto when it chose one
    static = [p for p in results if p in STATIC_INT8 or "int8-static" in (results[p].get("chose") or "")]
    if args.what == "queries" and ref is not None and static:
        calibrated = set(calibration_queries(args.what, args.limit)[0])
        plain, _, _ = texts_for(args.what, args.limit)
        outside = np.array([t not in calibrated for t in plain])
        figures = ", ".join(f"{p} {float((vectors[p] * ref).sum(1)[outside].min()):.5f}" for p in static)
        print(
            f"\nbgekit's static int8 graphs calibrated on {len(calibrated)} queries beside the documents, "
            f"{len(plain) - int(outside.sum())} of them timed; min cos vs fp32 over the {int(outside.sum())} "
            f"timed queries not calibrated on: {figures}"
        )


QUALIFYING_COSINE = 0.995
"""A bgekit path counts as full quality when every embedding keeps this cosine to fp32."""


def auto_summary(results: dict[str, dict], vectors: dict[str, np.ndarray], ref: np.ndarray | None) -> str:
    """How ``backend="auto"`` did: what it chose, and its speed against the fastest full-quality bgekit path."""
    if "bgekit-auto" not in results or ref is None:
        return ""
    qualifying = {
        p: r["n"] / r["seconds"]
        for p, r in results.items()
        if p.startswith("bgekit-")
        and p != "bgekit-auto"
        and float((vectors[p] * ref).sum(1).min()) >= QUALIFYING_COSINE
    }
    auto = results["bgekit-auto"]
    line = f"\nbgekit-auto chose {auto.get('chose')}"
    if qualifying:
        best = max(qualifying, key=qualifying.__getitem__)
        ratio = auto["n"] / auto["seconds"] / qualifying[best]
        line += f"; the fastest bgekit path at cosine >= {QUALIFYING_COSINE} here is {best}: auto runs at {ratio:.2f} of it"
    return line


if __name__ == "__main__":
    main()
