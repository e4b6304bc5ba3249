"""Serve an embedder, a reranker and/or an index over HTTP (OpenAI-, TEI- and Cohere-shaped routes).

Binds to 127.0.0.1 unless --host says otherwise; a non-loopback --host needs an API key (--api-key or
BGEKIT_API_KEY) unless --insecure is given. Every limit is a flag; `GET /docs` shows the OpenAPI schema.

Example:
    bgekit serve --model BAAI/bge-m3 --reranker BAAI/bge-reranker-v2-m3 --port 8000
    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' -d '{"input": ["what is bge?"]}'
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from bgekit.cli.runtime_options import add_backend_argument
from bgekit.errors import ConfigError
from bgekit.serve.config import ServerConfig, is_loopback, loopback_host_names

API_KEY_ENV = "BGEKIT_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = ServerConfig.default
    parser.add_argument("--model", default=None, help="an embedder for the embedding routes")
    parser.add_argument("--reranker", default=None, help="a reranker for /rerank, /v1/rerank and /search")
    parser.add_argument("--index", default=None, help="an index folder written by `bgekit index` (/search)")
    parser.add_argument(
        "--store", default=None, help="or a Milvus URI written by `bgekit index --store` (/search)"
    )
    parser.add_argument("--collection", default="bgekit", help="--store: the collection to search")
    parser.add_argument("--token", default=None, help="--store: the Milvus server's token")
    parser.add_argument(
        "--m3-rescore", action="store_true", help="BGE-M3 index: rerank with M3's colbert+sparse+dense score"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    add_backend_argument(parser)
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with the checkpoints"
    )
    parser.add_argument("--served-model-name", default=None, help="the model name the API reports")
    parser.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without an API key"
    )
    parser.add_argument(
        "--max-client-batch-size",
        type=int,
        default=default("max_client_batch_size"),
        help="most texts per request (413 beyond)",
    )
    parser.add_argument(
        "--max-input-length", type=int, default=None, help="most tokens per text (default: the model's limit)"
    )
    parser.add_argument(
        "--no-auto-truncate",
        action="store_true",
        help="refuse (413) texts longer than --max-input-length unless a request says truncate=true",
    )
    parser.add_argument(
        "--payload-limit",
        type=int,
        default=default("payload_limit"),
        help="most bytes per request body (413)",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=default("max_concurrent_requests"),
        help="requests in flight before 429",
    )
    parser.add_argument("--max-top-k", type=int, default=default("max_top_k"), help="largest top_k / top_n")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=default("request_timeout"),
        help="seconds a request may wait for the model (503 beyond)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=default("max_batch_tokens"),
        help="most tokens gathered from many requests into one model call",
    )
    parser.add_argument(
        "--batch-wait",
        type=float,
        default=default("batch_wait"),
        help="most seconds a model call waits for requests still being tokenized (0: never)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=default("streams"),
        help="with --backend openvino: groups of requests run at once, the threads split between them "
        "(2: more small requests per second under load; 1: lowest latency)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=default("graceful_timeout"),
        help="seconds a SIGTERM'd server lets requests in flight finish",
    )
    parser.add_argument(
        "--image-root",
        default=None,
        help='multimodal models: the only folder whose files requests may name as {"path": ...} '
        "images (default: none, images come as base64 only)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (off by default: it costs the event loop time under load; "
        "/metrics counts requests by route and status)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from the flags; refuses a network bind without an API key."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None and not args.insecure:
        raise ConfigError(
            f"--host {args.host} exposes the server beyond this machine: give --api-key (or set "
            f"{API_KEY_ENV}), or --insecure if something in front of it authenticates"
        )
    return ServerConfig(
        max_client_batch_size=args.max_client_batch_size,
        max_input_length=args.max_input_length,
        auto_truncate=not args.no_auto_truncate,
        payload_limit=args.payload_limit,
        max_concurrent_requests=args.max_concurrent_requests,
        max_top_k=args.max_top_k,
        request_timeout=args.request_timeout,
        max_batch_tokens=args.max_batch_tokens,
        batch_wait=args.batch_wait,
        streams=args.streams,
        api_key=api_key,
        allowed_hosts=loopback_host_names(args.host),
        served_model_name=args.served_model_name,
        graceful_timeout=args.graceful_timeout,
        image_root=args.image_root,
    )


def build_app(args: argparse.Namespace) -> Any:
    from bgekit import Embedder
    from bgekit.cli.search import open_searchable, second_stage
    from bgekit.serve import create_app

    if not (args.index or args.store or args.model or args.reranker):
        raise ConfigError("give --model, --reranker, --index or --store: there is nothing to serve")
    if args.index and (args.model or args.store):
        raise ConfigError("give --index alone, not with --model or --store: an index brings its model")
    config = config_from_args(args)
    trust = bool(args.trust_remote_code)
    index: Any = None
    embedder: Any = None
    if args.index or args.store:
        index = open_searchable(args)
    elif args.model:
        from bgekit.models.loading import load_config
        from bgekit.multimodal.settings import kind_from_config

        if os.path.isdir(args.model) and kind_from_config(load_config(args.model, trust_remote_code=trust)):
            from bgekit.multimodal import MultimodalEmbedder  # a CLIP (BGE-VL) folder: images too

            embedder = MultimodalEmbedder(args.model, dtype=args.dtype)
        else:
            embedder = Embedder(args.model, dtype=args.dtype, backend=args.backend, trust_remote_code=trust)
    return create_app(index, embedder=embedder, reranker=second_stage(args, index), config=config)


def run(args: argparse.Namespace) -> int:
    from bgekit.optional import require_fastapi

    require_fastapi()
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError("serving needs uvicorn: pip install 'bgekit[serve]'") from exc
    app = build_app(args)
    config: ServerConfig = app.state.config
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"bgekit serve: listening on http://{shown_host}:{args.port}", file=sys.stderr)
    print(f"bgekit serve: routes {' '.join(app.state.routes)}; schema at /docs", file=sys.stderr)
    choice = getattr(app.state.embedder, "auto_choice", None)
    if choice is not None:
        print(f"bgekit serve: backend auto: {choice.reason}", file=sys.stderr)
    if config.api_key is None and not is_loopback(args.host):
        print(
            f"bgekit serve: warning: {args.host} is reachable without an API key (--insecure)",
            file=sys.stderr,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=int(config.graceful_timeout),
            log_level="info",
            access_log=args.access_log,
        )
    finally:
        store = app.state.index
        if store is not None and hasattr(store, "close"):
            store.close()  # a Milvus store's client (and Milvus Lite's server process)
    return 0
