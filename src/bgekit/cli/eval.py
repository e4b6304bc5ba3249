"""Evaluate embedders (and an optional reranker) on retrieval datasets, as MTEB and BEIR score them.

Datasets are BEIR or FlagEmbedding-custom folders, folders holding several of them (every complete
set inside is evaluated), or descriptor names (``scifact``; loaded from $BGEKIT_DATA_DIR/<name> or the
hub). Corpus embeddings and search results are cached under --output-dir, keyed by the model's
fingerprint; --overwrite recomputes. Reports: report.md, report.json, recall_at_k.png, runs/*.trec.
Datasets whose corpus or query rows name an ``image`` are scored with a MultimodalEmbedder (BGE-VL).

Example:
    bgekit eval --model PATH --dataset ../shared/data/scifact --split test --output-dir results/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from bgekit.evaluation.metrics import DEFAULT_K_VALUES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", required=True, help="model folder(s) or hub name(s)")
    parser.add_argument(
        "--dataset",
        nargs="+",
        required=True,
        help="dataset folder(s), folder(s) of datasets, or descriptor names",
    )
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--reranker", default=None, help="reranker folder: rerank the top --rerank-top-k")
    parser.add_argument("--rerank-top-k", type=int, default=100)
    parser.add_argument(
        "--rerank-fusion-weight",
        type=float,
        default=None,
        metavar="W",
        help="rank by W * z(rerank score) + (1 - W) * z(retrieval score), standardised per query "
        "(default: the reranker's score alone)",
    )
    parser.add_argument("--rerank-dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument("--rerank-batch-size", type=int, default=None)
    parser.add_argument("--rerank-max-length", type=int, default=None)
    parser.add_argument("--rerank-devices", nargs="+", default=None, help="one reranker worker per device")
    parser.add_argument("--search-top-k", type=int, default=1000)
    parser.add_argument("--k-values", type=int, nargs="+", default=list(DEFAULT_K_VALUES))
    parser.add_argument("--main-score", default="ndcg_at_10")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="metrics in the table (default: ndcg_at_10 recall_at_100 ...)",
    )
    parser.add_argument(
        "--output-dir", default="results", help="cache, run files and reports (default: results)"
    )
    parser.add_argument("--format", choices=["markdown", "json"], default="markdown", help="what to print")
    parser.add_argument("--overwrite", action="store_true", help="recompute instead of reading the cache")
    parser.add_argument("--per-query", action="store_true", help="keep per-query scores in report.json")
    parser.add_argument(
        "--ignore-identical-ids", action="store_true", help="drop hits whose id is the query's"
    )
    parser.add_argument("--corpus-chunk-size", type=int, default=50_000)
    parser.add_argument("--model-name", nargs="+", default=None, help="name(s) for the reports")
    # embedder settings (default: the model's own, from bgekit.json / sentence-transformers config)
    parser.add_argument("--pooling", choices=["cls", "mean", "last_token"], default=None)
    parser.add_argument("--query-instruction", default=None)
    parser.add_argument("--passage-instruction", default=None)
    parser.add_argument("--query-max-length", type=int, default=None)
    parser.add_argument("--passage-max-length", type=int, default=None)
    parser.add_argument("--truncate-dim", type=int, default=None)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="one worker per device")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    # progress lines from bgekit only (faiss and others log at INFO on import)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("bgekit")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        result = _evaluate(args)
    finally:
        log.removeHandler(handler)
    if args.format == "json":
        print(json.dumps([r.to_dict(include_per_query=False) for r in result.results], indent=2))
    else:
        print(result.to_markdown(args.metrics), end="")
    return 0


def _evaluate(args: argparse.Namespace) -> Any:
    from bgekit.evaluation import evaluate
    from bgekit.multimodal.cli import evaluate_images, image_dataset_folders

    image_folders = image_dataset_folders(args.dataset)
    if image_folders is not None:
        return evaluate_images(args, image_folders)
    embedder_kwargs = {
        key: value
        for key, value in {
            "pooling": args.pooling,
            "query_instruction": args.query_instruction,
            "passage_instruction": args.passage_instruction,
            "query_max_length": args.query_max_length,
            "passage_max_length": args.passage_max_length,
            "truncate_dim": args.truncate_dim,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "devices": args.devices,
        }.items()
        if value is not None
    }
    if args.trust_remote_code:
        embedder_kwargs["trust_remote_code"] = True
    embedder_kwargs["show_progress"] = not args.no_progress
    return evaluate(
        args.model,
        args.dataset,
        split=args.split,
        k_values=args.k_values,
        search_top_k=args.search_top_k,
        main_score=args.main_score,
        metrics=args.metrics,
        reranker=args.reranker,
        rerank_top_k=args.rerank_top_k,
        rerank_fusion_weight=args.rerank_fusion_weight,
        reranker_kwargs={
            key: value
            for key, value in {
                "dtype": args.rerank_dtype,
                "batch_size": args.rerank_batch_size,
                "max_length": args.rerank_max_length,
                "devices": args.rerank_devices,
                "show_progress": False if args.no_progress else None,
                "trust_remote_code": True if args.trust_remote_code else None,
            }.items()
            if value is not None
        },
        ignore_identical_ids=args.ignore_identical_ids,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        per_query=args.per_query,
        corpus_chunk_size=args.corpus_chunk_size,
        model_name=args.model_name,
        embedder_kwargs=embedder_kwargs,
        show_progress=False if args.no_progress else None,
    )
