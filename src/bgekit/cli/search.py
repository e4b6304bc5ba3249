"""Search a saved index or a Milvus store from the command line: the best documents for each query.

Example:
    bgekit search --index my-index --query "what is bge?" --top-k 5 [--reranker BAAI/bge-reranker-v2-m3]
    bgekit search --store corpus.db --query "what is bge?" --top-k 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bgekit.cli.ann_options import add_search_knobs, search_knobs
from bgekit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default=None, help="an index folder written by `bgekit index`")
    parser.add_argument(
        "--store",
        default=None,
        help="or a Milvus URI written by `bgekit index --store`: PATH.db or http://host:19530",
    )
    parser.add_argument("--collection", default="bgekit", help="--store: the collection to search")
    parser.add_argument(
        "--token", default=None, help="--store: the server's token (user:password or API key)"
    )
    parser.add_argument(
        "--model", default=None, help="--store: the embedder (default: the one that wrote it)"
    )
    parser.add_argument(
        "--fusion", choices=["weighted", "rrf"], default="weighted", help="--store: hybrid fusion in Milvus"
    )
    add_search_knobs(parser.add_argument_group("--index built with --ann: search knobs"))
    parser.add_argument("--query", default=None, nargs="+", help="one or more queries")
    parser.add_argument(
        "--image",
        default=None,
        nargs="+",
        help="image queries (an index built with --images); with --query, image i and query i are one query",
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
    parser.add_argument(
        "--reranker", default=None, help="rerank the first --rerank-top-k hits with this model"
    )
    parser.add_argument(
        "--m3-rescore", action="store_true", help="BGE-M3 index: rerank with M3's colbert+sparse+dense score"
    )
    parser.add_argument("--rerank-top-k", type=int, default=100)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with the checkpoints"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")


def second_stage(args: argparse.Namespace, index: Any) -> Any:
    """The reranker that ``--reranker`` or ``--m3-rescore`` asks for (``None`` for neither), for search and
    serve alike."""
    from bgekit import Reranker
    from bgekit.index import M3Rescorer

    if args.m3_rescore:
        if args.reranker or index is None:
            raise ConfigError(
                "--m3-rescore reranks with the index's own BGE-M3 model: give --index, not --reranker"
            )
        return M3Rescorer(index.embedder)
    if not args.reranker:
        return None
    backend = getattr(args, "backend", None)  # serve's --backend runs both models
    return Reranker(
        args.reranker, dtype=args.dtype, backend=backend, trust_remote_code=args.trust_remote_code
    )


def open_searchable(args: argparse.Namespace) -> Any:
    """The index folder (``--index``) or Milvus collection (``--store``) that search and serve read; with a
    store, ``--model`` (when given) embeds the queries, checked against the model that wrote it."""
    from bgekit.index import SearchIndex

    if args.store is None:
        from bgekit.multimodal.index import IMAGES_FILE, MultimodalIndex

        if os.path.isfile(os.path.join(args.index, IMAGES_FILE)):  # built by `bgekit index --images`
            return MultimodalIndex.load(args.index, dtype=args.dtype)
        return SearchIndex.load(args.index, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    from bgekit.stores import MilvusStore

    return MilvusStore.open(
        args.store,
        args.model,
        collection=args.collection,
        token=args.token,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )


def run(args: argparse.Namespace) -> int:
    if (args.index is None) == (args.store is None):
        raise ConfigError("give one of --index (an index folder) and --store (a Milvus URI)")
    images = getattr(args, "image", None)
    if args.query is None and images is None:
        raise ConfigError("give --query, --image or both")
    if images is not None and args.store is not None:
        raise ConfigError("--image searches an index folder built with `bgekit index --images`, not --store")
    index = open_searchable(args)
    options: dict[str, Any] = search_knobs(args) if args.store is None else {"fusion": args.fusion}
    if images is not None:
        if not hasattr(index, "images"):
            raise ConfigError("--image searches an index built with `bgekit index --images`")
        options["images"] = images
    try:
        reranker = second_stage(args, index)
        results = index.search(
            args.query,
            args.top_k,
            mode=args.mode,
            reranker=reranker,
            rerank_top_k=args.rerank_top_k,
            **options,
        )
    finally:
        if args.store is not None:
            index.close()
    for query, hits in zip(args.query or images or [], results, strict=True):
        if args.json:
            print(json.dumps({"query": query, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            continue
        print(f"# {query}")
        for rank, hit in enumerate(hits, start=1):
            snippet = (f"{hit.title}: " if hit.title else "") + hit.text
            print(f"{rank:>3}. {hit.score:8.4f}  {hit.id}  {snippet[:100]}")
    return 0
