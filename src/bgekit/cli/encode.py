"""Encode a JSONL (or plain-text) file into a .npy matrix of embeddings.

Input lines are JSON objects with a ``text`` field (and optional ``title``), JSON strings, or, for a
``.txt`` file, one text per line. The output is written atomically.

With ``--ray [ADDRESS]`` the input (JSONL or Parquet, a folder of them, local or ``s3://``...) is encoded on
a Ray cluster and OUTPUT is a folder of Parquet parts (``id``, ``dense``, for BGE-M3 ``sparse``
``{indices, values}``, with ``--colbert`` ``colbert``); rerun the same command after a crash to finish it.

Example:
    bgekit encode --model BAAI/bge-m3 --input corpus.jsonl --output emb/ --ray auto --gpus-per-actor 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bgekit.cli.ray_options import add_ray_arguments, ray_kwargs
from bgekit.cli.runtime_options import add_backend_argument
from bgekit.errors import ConfigError, DataFormatError
from bgekit.io import iter_jsonl, iter_text_lines, save_npy_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub name or local model folder")
    parser.add_argument(
        "--input",
        required=True,
        help="JSONL with text (and title) per line, a .txt file; with --ray also Parquet",
    )
    parser.add_argument(
        "--output", required=True, help="the .npy embeddings to write (with --ray: a folder of Parquet parts)"
    )
    parser.add_argument("--queries", action="store_true", help="encode as queries (query instruction)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    add_backend_argument(parser)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    parser.add_argument("--devices", nargs="+", default=None, help="one worker per device, e.g. cpu cpu")
    parser.add_argument(
        "--precision",
        choices=["float32", "int8", "uint8", "binary", "ubinary"],
        default="float32",
        help="quantise the output (sentence-transformers conventions); int8/uint8 ranges go to OUTPUT.ranges.npy",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-sparse", action="store_true", help="--ray, BGE-M3: write only dense vectors")
    parser.add_argument("--colbert", action="store_true", help="--ray, BGE-M3: also write ColBERT vectors")
    add_ray_arguments(parser)


def read_texts(path: str, queries: bool) -> list[Any]:
    """Texts (queries) or corpus items (strings or title/text dicts) from a file."""
    if path.endswith(".txt"):
        if not os.path.isfile(path):
            raise DataFormatError("file not found", path)
        return [line.rstrip("\n") for _, line in iter_text_lines(path)]
    items: list[Any] = []
    for line_no, row in iter_jsonl(path):
        if isinstance(row, str):
            items.append(row)
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            if queries:
                items.append(row["text"])
            else:
                title = row.get("title")
                items.append({"title": title if isinstance(title, str) else "", "text": row["text"]})
        else:
            raise DataFormatError(
                "expected a JSON string or an object with a string 'text' field", path, line_no
            )
    return items


def run(args: argparse.Namespace) -> int:
    from bgekit import Embedder

    if args.ray is not None:
        return _run_on_ray(args)
    if args.no_sparse or args.colbert:
        raise ConfigError("--no-sparse and --colbert go with --ray (the .npy output holds dense vectors)")
    items = read_texts(args.input, args.queries)
    model = Embedder(
        args.model,
        dtype=args.dtype,
        backend=args.backend,
        batch_size=args.batch_size,
        devices=args.devices,
        show_progress=not args.no_progress,
    )
    if model.auto_choice is not None:
        print(f"backend auto: {model.auto_choice.reason}", file=sys.stderr)
    start = time.perf_counter()
    kwargs = {"max_length": args.max_length} if args.max_length else {}
    vectors = model.encode_queries(items, **kwargs) if args.queries else model.encode_corpus(items, **kwargs)
    model.close()
    if args.precision != "float32":
        from bgekit.inference.quantize import compute_ranges, quantize_embeddings

        ranges = compute_ranges(vectors)
        vectors = quantize_embeddings(vectors, args.precision, ranges=ranges)
        if args.precision.endswith("int8"):
            save_npy_atomic(args.output + ".ranges.npy", ranges)
    save_npy_atomic(args.output, vectors)
    elapsed = time.perf_counter() - start
    print(f"encoded {len(items)} texts -> {args.output} {vectors.shape} in {elapsed:.1f}s", file=sys.stderr)
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    from bgekit.distributed.ray_encode import encode_with_ray

    if args.precision != "float32" or args.devices:
        raise ConfigError("--precision and --devices do not go with --ray (set --gpus-per-actor instead)")
    settings = {"dtype": args.dtype, "batch_size": args.batch_size}
    result = encode_with_ray(
        args.model,
        args.input,
        args.output,
        sparse=False if args.no_sparse else None,
        colbert=args.colbert,
        queries=args.queries,
        max_length=args.max_length,
        embedder_kwargs={k: v for k, v in settings.items() if v is not None},
        show_progress=not args.no_progress,
        **ray_kwargs(args),
    )
    print(
        f"encoded {result.rows} texts -> {args.output} ({result.shards} part(s), {result.shards_skipped} "
        f"already there) by {result.num_actors} Ray actor(s) in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    return 0
