"""Milvus Lite against the in-memory SearchIndex on the same vectors: insert rate, search rate, quality.

Synthetic BGE-M3-shaped data (no model runs, so only storage and search are timed): N documents with
unit dense vectors of dimension 384 (clustered, so neighbours are not ties) and sparse lexical weights over
a 250,002-token vocabulary (Zipf-distributed token ids, ~60 per document, ~12 per query). Both stores get
the same vectors through an encoder that looks precomputed query vectors up. Prints:

- insert: documents/s written into a Milvus Lite collection (flat dense index, sparse inverted index), and
  SearchIndex's construction for scale;
- search: queries/s for dense, sparse and hybrid (weighted 1.0/0.3 with 1,000 candidates per request, the
  default, and with 100; RRF), batches of 32;
- quality: the mean overlap of each query's top 10 with the exact top 10 of SearchIndex (1.0 = same set).

    python benchmarks/scale_milvus.py                    # 20,000 documents, 256 queries
    python benchmarks/scale_milvus.py --docs 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table  # noqa: E402

VOCAB = 250_002


class LookupEncoder:
    """An M3-like encoder whose queries are ``"q<number>"``: returns the precomputed vectors and weights."""

    m3_heads = object()  # searched as BGE-M3 (dense + sparse)

    def __init__(self, dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        self.dense, self.sparse, self.dim = dense, sparse, dense.shape[1]

    def fingerprint(self, include_runtime: bool = True) -> str:
        return "synthetic"

    def encode_queries(self, texts: list[str], **kwargs: Any) -> dict[str, Any]:
        rows = [int(t[1:]) for t in texts]
        return {"dense_vecs": self.dense[rows], "lexical_weights": self.sparse[rows]}


def synthetic(count: int, tokens: int, rng: np.random.Generator, centres: np.ndarray) -> tuple[Any, Any]:
    dense = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.normal(size=(count, centres.shape[1]))
    dense = (dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32)
    rows, cols, vals = [], [], []
    for i in range(count):
        ids = np.unique(np.minimum(rng.zipf(1.3, tokens), VOCAB - 1))
        rows += [i] * len(ids)
        cols += ids.tolist()
        vals += rng.uniform(0.01, 0.4, len(ids)).tolist()
    lexical = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(count, VOCAB))
    return dense, lexical


def overlap(found: list[list[Any]], exact: list[list[Any]]) -> float:
    return float(
        np.mean(
            [len({h.id for h in a} & {h.id for h in b}) / len(b) for a, b in zip(found, exact, strict=True)]
        )
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
        return f"{name} ({', '.join(wanted)}), {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="queries per search call")
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()

    import milvus_lite
    import pymilvus

    from bgekit.index import SearchIndex
    from bgekit.stores import MilvusStore

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, args.dim))
    docs_dense, docs_sparse = synthetic(args.docs, 60, rng, centres)
    query_dense, query_sparse = synthetic(args.queries, 12, rng, centres)
    encoder = LookupEncoder(query_dense, query_sparse)
    ids = [f"d{i}" for i in range(args.docs)]
    documents = [{"title": "", "text": f"document {i}"} for i in range(args.docs)]
    queries = [f"q{i}" for i in range(args.queries)]
    print(f"# {cpu_name()}; pymilvus {pymilvus.__version__}, milvus-lite {milvus_lite.__version__}")
    print(
        f"# {args.docs:,} documents (dim {args.dim}, {docs_sparse.nnz / args.docs:.0f} tokens each), "
        f"{args.queries} queries in batches of {args.batch}"
    )

    start = time.perf_counter()
    index = SearchIndex(encoder, ids, documents, docs_dense, docs_sparse)
    index.search(queries[:1], top_k=10)  # builds faiss and the sparse transpose
    index_build = time.perf_counter() - start

    def rate(search: Any, **options: Any) -> tuple[float, list[list[Any]]]:
        results: list[list[Any]] = []
        begin = time.perf_counter()
        for first in range(0, len(queries), args.batch):
            results += search(queries[first : first + args.batch], top_k=10, **options)
        return len(queries) / (time.perf_counter() - begin), results

    with tempfile.TemporaryDirectory() as folder:
        store = MilvusStore.create(os.path.join(folder, "bench.db"), encoder)
        start = time.perf_counter()
        store.insert(ids, documents, docs_dense, docs_sparse, batch_size=1000)
        insert_seconds = time.perf_counter() - start
        store.search(queries[:1], top_k=10)  # warm
        rows = [
            ["insert", f"{args.docs / insert_seconds:,.0f} docs/s", f"(built in {index_build:.1f}s)", ""],
        ]
        for mode, options in (
            ("dense", {"mode": "dense"}),
            ("sparse", {"mode": "sparse"}),
            ("hybrid weighted", {"mode": "hybrid"}),
            ("hybrid weighted, 100 candidates", {"mode": "hybrid", "candidates": 100}),
            ("hybrid rrf", {"mode": "hybrid", "fusion": "rrf"}),
        ):
            milvus_qps, found = rate(store.search, **options)
            exact_options = {"mode": options["mode"]}
            index_qps, exact = rate(index.search, **exact_options)
            quality = "n/a (RRF ranks, not scores)" if "fusion" in options else f"{overlap(found, exact):.3f}"
            rows.append([f"search {mode}", f"{milvus_qps:,.1f} q/s", f"{index_qps:,.1f} q/s", quality])
        store.close()
    print_table(["what", "Milvus Lite", "SearchIndex (in memory, exact)", "top-10 overlap with exact"], rows)


if __name__ == "__main__":
    main()
