"""Index-then-search for RAG: bgekit's SearchIndex vs sentence-transformers' encode + semantic_search.

The whole job a RAG user runs once per corpus and then per query batch: embed the SciFact corpus, embed
the test queries, take each query's top 10. Same model (all-MiniLM-L6-v2 unless --model), its own max
length (256, as MTEB), same threads; each path runs in its own process. Prints seconds, the ratio to
sentence-transformers, peak memory, and SciFact test nDCG@10 of each path's results (quality beside speed:
all three should give MTEB's 0.6451 or within noise of it for int8).

    python benchmarks/search.py                 # full SciFact (5,183 documents, 300 test queries)
    python benchmarks/search.py --limit 1000    # the first 1,000 documents (nDCG is then not comparable)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    default_model_path,
    describe_device,
    load_scifact,
    peak_rss_mb,
    print_table,
    run_worker,
)

PATHS = ["st-fp32", "bgekit-fp32", "bgekit-int8"]


def worker(args: argparse.Namespace) -> None:
    import json

    import torch

    torch.set_num_threads(args.threads)
    corpus, queries, qrels = load_scifact()
    corpus = corpus[: args.limit] if args.limit else corpus
    tests = [q for q in queries if str(q["_id"]) in qrels]
    query_texts = [q["text"] for q in tests]
    start = time.perf_counter()
    if args.worker == "st-fp32":
        from sentence_transformers import SentenceTransformer, util

        model = SentenceTransformer(args.model, device="cpu")
        docs = model.encode(
            [f"{d['title']} {d['text']}".strip() for d in corpus], batch_size=32, convert_to_tensor=True
        )
        indexed = time.perf_counter()
        found = util.semantic_search(model.encode(query_texts, convert_to_tensor=True), docs, top_k=10)
        hits = [[(str(corpus[h["corpus_id"]]["_id"]), float(h["score"])) for h in row] for row in found]
    else:
        from bgekit import Embedder
        from bgekit.index import SearchIndex

        kwargs = {"quantization": "int8"} if args.worker == "bgekit-int8" else {}
        model = Embedder(args.model, device="cpu", show_progress=False, **kwargs)
        if kwargs:  # the ONNX export is cached beside the model: done once, not part of each run
            model.encode_corpus(["warm up"])
            start = time.perf_counter()
        index = SearchIndex.build(model, corpus)
        indexed = time.perf_counter()
        found = index.search(query_texts, top_k=10)
        hits = [[(h.id, h.score) for h in row] for row in found]
    done = time.perf_counter()
    run = {str(q["_id"]): dict(row) for q, row in zip(tests, hits, strict=True)}
    from bgekit.evaluation.metrics import compute_metrics

    scores, _ = compute_metrics(qrels, run, k_values=[10])
    result = {
        "index_s": indexed - start,
        "search_s": done - indexed,
        "ndcg": scores["ndcg_at_10"],
        "rss_mb": peak_rss_mb(),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    parser.add_argument("--worker", choices=PATHS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or default_model_path()
    if args.worker:
        worker(args)
        return
    corpus, _, qrels = load_scifact()
    size = min(len(corpus), args.limit or len(corpus))
    print(f"# search: {size} SciFact documents, {len(qrels)} test queries, top 10, {args.threads} threads")
    print(f"# {describe_device('cpu')}; model {args.model}\n")
    extra = ["--model", args.model, "--threads", str(args.threads)] + (
        ["--limit", str(args.limit)] if args.limit else []
    )
    results = {}
    for path in args.paths:
        results[path] = run_worker(__file__, [path, *extra], args.threads)
        print(f"{path}: {results[path]}", file=sys.stderr)
    base = results.get("st-fp32")
    rows = []
    for path, r in results.items():
        total = r["index_s"] + r["search_s"]
        ratio = f"{(base['index_s'] + base['search_s']) / total:.2f}x" if base else "-"
        rows.append(
            [
                path,
                f"{r['index_s']:.1f}",
                f"{r['search_s']:.2f}",
                ratio,
                f"{r['rss_mb']:.0f}",
                f"{r['ndcg']:.4f}",
            ]
        )
    print_table(["path", "index s", "search s", "vs sentence-transformers", "peak MB", "nDCG@10"], rows)


if __name__ == "__main__":
    main()
