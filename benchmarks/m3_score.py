"""BGE-M3 ``compute_score``: pairs per second, bgekit against FlagEmbedding's ``BGEM3FlagModel``.

Both score the same (query, passage) pairs of real SciFact text with the same tiny random M3 checkpoint
(XLM-RoBERTa-shaped, random ``colbert_linear.pt``/``sparse_linear.pt``; the real bge-m3 weights are not
available offline), fp32 on CPU, max lengths 512. FlagEmbedding encodes both sides of every pair in
batches and computes B x B dense, sparse and ColBERT score matrices per batch, keeping the diagonal;
bgekit encodes each distinct text once and scores each pair on its own (linear in the pairs).

FlagEmbedding's quadratic ColBERT step makes it slow here, so by default it runs on the first
``--reference-pairs`` pairs only, and bgekit is timed on the same pairs (the ratio) and on all
``--pairs`` (bgekit's scaling). Outputs are checked equal on the shared pairs.

    python benchmarks/m3_score.py --pairs 10000 --reference-pairs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "scifact"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_pairs(n: int, mode: str) -> list[tuple[str, str]]:
    """``distinct``: pair i is (query i mod 1109, doc i mod 5183); ``rerank``: 100 passages per query."""
    with open(DATA / "queries.jsonl", encoding="utf-8") as handle:
        queries = [json.loads(line)["text"] for line in handle]
    with open(DATA / "corpus.jsonl", encoding="utf-8") as handle:
        docs = [f"{row['title']} {row['text']}" for row in map(json.loads, handle)]
    if mode == "rerank":
        return [(queries[i // 100], docs[(i * 37) % len(docs)]) for i in range(n)]
    return [(queries[i % len(queries)], docs[i % len(docs)]) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--reference-pairs", type=int, default=1_000, help="pairs FlagEmbedding scores")
    parser.add_argument("--mode", choices=["distinct", "rerank"], default="distinct")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from tests.builders import build_tiny_m3  # the same builder the differential tests use

    from bgekit import Embedder

    folder = Path(tempfile.mkdtemp(prefix="bgekit-m3-bench-")) / "m3"
    folder.mkdir()
    build_tiny_m3(folder)
    pairs = load_pairs(args.pairs, args.mode)
    shared = pairs[: args.reference_pairs]
    weights = [0.4, 0.2, 0.4]

    ours = Embedder(str(folder), device="cpu", dtype="fp32", query_max_length=512, passage_max_length=512)
    ours.compute_score(pairs[:8])  # warm-up
    start = time.perf_counter()
    ours_shared = ours.compute_score(shared, batch_size=args.batch_size, weights_for_different_modes=weights)
    ours_shared_s = time.perf_counter() - start
    start = time.perf_counter()
    ours.compute_score(pairs, batch_size=args.batch_size, weights_for_different_modes=weights)
    ours_all_s = time.perf_counter() - start

    from FlagEmbedding import BGEM3FlagModel

    flag = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu")
    flag.compute_score(pairs[:8])
    start = time.perf_counter()
    flag_shared = flag.compute_score(shared, batch_size=args.batch_size, weights_for_different_modes=weights)
    flag_shared_s = time.perf_counter() - start

    worst = max(float(np.abs(np.array(ours_shared[k]) - np.array(flag_shared[k])).max()) for k in ours_shared)
    print(
        f"pairs mode={args.mode}, tiny M3 (hidden 32), fp32, CPU threads={__import__('torch').get_num_threads()}"
    )
    print(f"largest |bgekit - FlagEmbedding| over the five scores: {worst:.2e}")
    print(f"{'':32s}{'pairs':>8s}{'seconds':>10s}{'pairs/s':>10s}")
    print(
        f"{'FlagEmbedding compute_score':32s}{len(shared):8d}{flag_shared_s:10.2f}{len(shared) / flag_shared_s:10.1f}"
    )
    print(
        f"{'bgekit compute_score':32s}{len(shared):8d}{ours_shared_s:10.2f}{len(shared) / ours_shared_s:10.1f}"
    )
    print(f"{'bgekit compute_score':32s}{len(pairs):8d}{ours_all_s:10.2f}{len(pairs) / ours_all_s:10.1f}")
    print(f"speed-up on the same {len(shared)} pairs: {flag_shared_s / ours_shared_s:.1f}x")


if __name__ == "__main__":
    main()
