"""Approximate dense indexes on one machine: faiss IVF (flat, SQ8, PQ) and HNSW (flat, SQ8) against exact
search, as ``SearchIndex(ann=...)`` builds and searches them (``bgekit.index.ann``).

Part 1, synthetic: ``--n`` vectors of dimension ``--dim`` (1,000,000 x 384 by default), clustered the way
embeddings are rather than uniform noise: 1,000 random centres, spread along a shared 32-dimensional
subspace plus a little isotropic noise, unit length (the recipe of ``tests/index/test_ann.py``, scaled
up); fixed seeds. ``--queries`` held-out vectors of the same distribution. For each structure: build
seconds (training + adding), its size in memory, and recall@10 against exact search and queries/s (one
batch of all queries) at a few settings of its search knob; exact search (faiss ``IndexFlatIP``, what the
default ``SearchIndex`` runs) is the 1.00x of queries/s.

Part 2, real: SciFact test nDCG@10 of each structure over all-MiniLM-L6-v2 vectors of the 5,183
documents (default knobs, hits rescored exactly as ``SearchIndex`` does); the exact path gives 0.6451.
The vectors are encoded once and cached (``--cache``).

    python benchmarks/scale_index.py                        # 1M x 384, 1,000 queries, 2 threads
    python benchmarks/scale_index.py --n 100000 --queries 200   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

# idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads stall each other
# (faiss's PQ training took 10x longer with the default policy here)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import default_model_path, describe_device, load_scifact, peak_rss_mb, print_table  # noqa: E402

STRUCTURES: list[tuple[str, dict[str, Any], str, list[int]]] = [
    # (ann, options for 1M vectors, the knob swept, its values)
    ("ivf", {"nlist": 1024}, "nprobe", [8, 32, 128]),
    ("ivf-sq8", {"nlist": 1024}, "nprobe", [8, 32, 128]),
    ("ivf-pq", {"nlist": 1024}, "nprobe", [8, 32, 128]),
    ("hnsw", {}, "ef_search", [16, 64, 256]),
    ("hnsw-sq8", {}, "ef_search", [16, 64, 256]),
]
REPEATS = 3
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")


def cpu_flags() -> str:
    """The SIMD flags of this CPU that faiss's kernels use (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            line = next((row for row in handle if row.startswith("flags")), "")
    except OSError:
        return "unknown"
    have = set(line.split(":", 1)[-1].split())
    return ", ".join(f for f in CPU_FLAGS if f in have) or "none of " + ", ".join(CPU_FLAGS)


def clustered(n: int, dim: int, seed: int, centers: int = 1000, rank: int = 32) -> np.ndarray:
    """Unit vectors around ``centers`` fixed directions, spread along a shared ``rank``-dimensional
    subspace, plus isotropic noise; ``seed`` draws the points (the clusters and subspace are fixed).
    Made 100,000 at a time to bound the temporaries."""
    shape = np.random.default_rng(1234)
    middle = shape.standard_normal((centers, dim)).astype(np.float32)
    basis = shape.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for begin in range(0, n, 100_000):
        size = min(100_000, n - begin)
        points = (
            middle[rng.integers(0, centers, size)]
            + rng.standard_normal((size, rank)).astype(np.float32) @ basis
        )
        points += 0.2 * rng.standard_normal((size, dim)).astype(np.float32)
        out[begin : begin + size] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def timed_search(
    index: Any, config: Any, queries: np.ndarray, k: int, **knobs: int
) -> tuple[np.ndarray, float]:
    from bgekit.index.ann import search_faiss

    best = float("inf")
    for _ in range(REPEATS):  # the best of a few: a shared machine's speed drifts
        start = time.perf_counter()
        _, positions = search_faiss(index, config, queries, k, **knobs)
        best = min(best, time.perf_counter() - start)
    return positions, best


def synthetic(args: argparse.Namespace) -> None:
    import faiss

    from bgekit.index.ann import AnnConfig, build_faiss_index, recall_at_k, rescore

    start = time.perf_counter()
    stored = Path(args.cache).parent / f"clustered-{args.n}x{args.dim}.npy"
    if stored.is_file():  # made once: the same seeds give the same vectors
        vectors = np.load(stored)
    else:
        vectors = clustered(args.n, args.dim, seed=0)
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.save(stored, vectors)
    queries = clustered(args.queries, args.dim, seed=1)
    print(f"{args.n:,} x {args.dim} vectors ready in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    took = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        _, truth = exact.search(queries, 10)
        took = min(took, time.perf_counter() - start)
    exact_qps = len(queries) / took
    del exact
    print(f"\n## {args.n:,} synthetic clustered vectors of dimension {args.dim}, {len(queries):,} queries\n")
    print_table(
        ["structure", "search knob", "build s", "index MiB", "refine", "recall@10", "queries/s", "vs exact"],
        [
            [
                "exact (`flat`, IndexFlatIP)",
                "",
                "0",
                f"{vectors.nbytes / 2**20:,.0f}",
                "",
                "1.000",
                f"{exact_qps:,.0f}",
                "1.00x",
            ]
        ],
    )

    def row(
        name: str, knob: str, seconds: float, size: float, refine: str, recall: float, took: float
    ) -> None:
        cells = [name, knob, f"{seconds:.0f}", f"{size:,.0f}", refine, f"{recall:.3f}"]
        cells += [f"{len(queries) / took:,.0f}", f"{len(queries) / took / exact_qps:.2f}x"]
        print("| " + " | ".join(cells) + " |", flush=True)  # row by row: a long run shows what it has

    for ann, options, knob, values in STRUCTURES:
        if args.only and ann not in args.only:
            continue
        config = AnnConfig.parse(ann, **options)
        start = time.perf_counter()
        index = build_faiss_index(config, vectors)
        seconds = time.perf_counter() - start
        size = faiss.serialize_index(index).nbytes / 2**20
        name = f"`{ann}` ({config.factory_string(args.dim, args.n)})"
        for value in values:
            found, took = timed_search(index, config, queries, 10, **{knob: value})
            row(name, f"{knob}={value}", seconds, size, "", recall_at_k(found, truth), took)
        if config.quantizer is not None:  # compressed codes: fetch 4x and rank by the raw vectors kept
            value = values[1]
            found, took = timed_search(index, config, queries, 40, **{knob: value})
            start = time.perf_counter()
            _, best = rescore(vectors, queries, found, 10)
            took += time.perf_counter() - start
            row(name, f"{knob}={value}", seconds, size, "4", recall_at_k(best, truth), took)
        del index


def scifact_vectors(cache: Path) -> dict[str, Any]:
    """The SciFact corpus and test-query MiniLM vectors (encoded once, then read from ``cache``)."""
    if not cache.is_file():
        import torch

        from bgekit import Embedder

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        corpus, queries, qrels = load_scifact()
        tests = [q for q in queries if str(q["_id"]) in qrels]
        model = Embedder(default_model_path(), device="cpu", show_progress=False)
        docs = model.encode_corpus([{"title": d["title"], "text": d["text"]} for d in corpus])
        query_vectors = model.encode_queries([q["text"] for q in tests])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            doc_ids=np.array([str(d["_id"]) for d in corpus]),
            docs=docs,
            query_ids=np.array([str(q["_id"]) for q in tests]),
            queries=query_vectors,
        )
    with np.load(cache) as stored:
        return {key: stored[key] for key in stored.files}


def scifact(args: argparse.Namespace) -> None:
    from bgekit.evaluation.metrics import compute_metrics
    from bgekit.index.ann import AnnConfig, build_faiss_index, exact_top_k, recall_at_k, rescore, search_faiss

    data = scifact_vectors(Path(args.cache))
    _, _, qrels = load_scifact()
    docs, queries = data["docs"], data["queries"]
    doc_ids, query_ids = [str(i) for i in data["doc_ids"]], [str(i) for i in data["query_ids"]]

    def ndcg(positions: np.ndarray, scores: np.ndarray) -> float:
        run = {
            q: {doc_ids[p]: float(s) for p, s in zip(row_p, row_s, strict=True) if p >= 0}
            for q, row_p, row_s in zip(query_ids, positions, scores, strict=True)
        }
        return float(compute_metrics(qrels, run, k_values=[10])[0]["ndcg_at_10"])

    truth_s, truth = exact_top_k(docs, queries, 10)
    rows = [["exact (`flat`)", "", f"{ndcg(truth, truth_s):.4f}", "1.000"]]
    for ann, _, _, _ in STRUCTURES:
        config = AnnConfig.parse(ann)
        index = build_faiss_index(config, docs)
        knobs = (
            f"nlist={config.resolved(docs.shape[1], len(docs)).nlist}, nprobe={config.nprobe}"
            if ann.startswith("ivf")
            else f"M={config.hnsw_m}, ef_search={config.ef_search}"
        )
        for refine in (1, 4) if config.quantizer is not None else (1,):
            _, candidates = search_faiss(index, config, queries, 10 * refine)
            scores, found = rescore(docs, queries, candidates, 10)
            rows.append(
                [
                    f"`{ann}` ({config.factory_string(docs.shape[1], len(docs))})",
                    knobs + (f", refine_factor={refine}" if refine > 1 else ""),
                    f"{ndcg(found, scores):.4f}",
                    f"{recall_at_k(found, truth):.3f}",
                ]
            )
    print(
        f"\n## SciFact test ({len(queries)} queries, {len(docs):,} documents), all-MiniLM-L6-v2 vectors, default knobs\n"
    )
    print_table(["structure", "knobs", "nDCG@10", "recall@10 vs exact"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "bgekit-bench" / "scifact-minilm.npz")
    )
    parser.add_argument("--skip", choices=["synthetic", "scifact"], default=None)
    parser.add_argument("--only", nargs="+", default=None, help="these structures only (e.g. ivf hnsw)")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        cores = sum(1 for line in handle if line.startswith("processor"))
    print(
        f"# {describe_device('cpu')} ({cpu_flags()}), {args.threads} threads of {cores} cores, "
        f"faiss {faiss.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    start = time.perf_counter()
    if args.skip != "synthetic":
        synthetic(args)
    if args.skip != "scifact":
        scifact(args)
    print(f"\npeak memory {peak_rss_mb():,.0f} MiB; {time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
    main()
