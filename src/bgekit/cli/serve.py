"""Serve an index (and a reranker) over HTTP: POST /search, /embed, /rerank; GET /health; docs at /docs.

Binds to 127.0.0.1 unless --host says otherwise: the API has no authentication, so expose it on a
network only behind something that adds it.

Example:
    bgekit serve --index my-index --reranker BAAI/bge-reranker-v2-m3 --port 8000
    curl -s localhost:8000/search -H 'content-type: application/json' -d '{"query": "what is bge?"}'
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bgekit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default=None, help="an index folder written by `bgekit index`")
    parser.add_argument("--model", default=None, help="an embedder for /embed when there is no --index")
    parser.add_argument("--reranker", default=None, help="a reranker for /rerank and reranked /search")
    parser.add_argument(
        "--m3-rescore", action="store_true", help="BGE-M3 index: rerank with M3's colbert+sparse+dense score"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)


def build_app(args: argparse.Namespace) -> Any:
    from bgekit import Embedder
    from bgekit.cli.search import second_stage
    from bgekit.index import SearchIndex
    from bgekit.serve import create_app

    if not (args.index or args.model or args.reranker):
        raise ConfigError("give --index, --model or --reranker: there is nothing to serve")
    if args.index and args.model:
        raise ConfigError("give --index or --model, not both: an index brings the model that built it")
    index = SearchIndex.load(args.index, dtype=args.dtype) if args.index else None
    embedder = Embedder(args.model, dtype=args.dtype) if args.model else None
    return create_app(index, embedder=embedder, reranker=second_stage(args, index))


def run(args: argparse.Namespace) -> int:
    from bgekit.serve.app import require_fastapi

    require_fastapi()
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError("serving needs uvicorn: pip install 'bgekit[serve]'") from exc
    app = build_app(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"bgekit serve: warning: listening on {args.host}: the API has no authentication", file=sys.stderr
        )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
