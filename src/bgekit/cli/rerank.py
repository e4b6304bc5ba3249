"""Score (query, passage) pairs from a JSONL file with a reranker; write one score per line.

Each input line is a JSON object with a string ``query`` and a ``passage`` (a string, or a
``{"title", "text"}`` object); any other fields (ids, labels) are copied to the output line, which gets a
``score`` (or ``scores``, one per layer, with several ``--cutoff-layers``). The output is written
atomically: a failed run leaves no partial file.

Example:
    bgekit rerank --model BAAI/bge-reranker-v2-m3 --input pairs.jsonl --output scores.jsonl --normalize
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bgekit.errors import DataFormatError
from bgekit.io import iter_jsonl, write_jsonl_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub name or local reranker folder")
    parser.add_argument("--input", required=True, help='JSONL with {"query": ..., "passage": ...} per line')
    parser.add_argument("--output", required=True, help="where to write the JSONL scores")
    parser.add_argument("--normalize", action="store_true", default=None, help="sigmoid the scores")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None, help="token limit of a pair (default 512)")
    parser.add_argument("--query-max-length", type=int, default=None, help="token limit of the query")
    parser.add_argument("--prompt", default=None, help="LLM rerankers: the question after the pair")
    parser.add_argument("--cutoff-layers", type=int, nargs="+", default=None, help="layer-wise rerankers")
    parser.add_argument("--devices", nargs="+", default=None, help="one worker per device, e.g. cpu cpu")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with the checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true")


def read_pairs(path: str) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """The (query, passage) pairs of a JSONL file and each line's object; errors name file and line."""
    pairs: list[tuple[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, line_no)
        query, passage = row.get("query"), row.get("passage")
        if not isinstance(query, str):
            raise DataFormatError("field 'query' is missing or not a string", path, line_no)
        if isinstance(passage, dict):
            if not isinstance(passage.get("text"), str):
                raise DataFormatError("field 'passage' is an object without a string 'text'", path, line_no)
            title = passage.get("title")
            if title is not None and not isinstance(title, str):
                raise DataFormatError("field 'passage.title' is not a string", path, line_no)
        elif not isinstance(passage, str):
            raise DataFormatError(
                "field 'passage' is missing or not a string (or title/text object)", path, line_no
            )
        pairs.append((query, passage))
        rows.append(row)
    return pairs, rows


def run(args: argparse.Namespace) -> int:
    from bgekit import Reranker

    pairs, rows = read_pairs(args.input)
    reranker = Reranker(
        args.model,
        normalize=args.normalize,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
        query_max_length=args.query_max_length,
        prompt=args.prompt,
        cutoff_layers=args.cutoff_layers,
        devices=args.devices,
        trust_remote_code=args.trust_remote_code,
        show_progress=not args.no_progress,
    )
    start = time.perf_counter()
    try:
        scores = reranker.compute_score(pairs) if pairs else []
    finally:
        reranker.close()
    per_layer = bool(scores) and isinstance(scores[0], list)
    out = []
    for i, row in enumerate(rows):
        if per_layer:
            out.append({**row, "scores": [layer[i] for layer in scores]})
        else:
            out.append({**row, "score": scores[i]})
    write_jsonl_atomic(args.output, out)
    elapsed = time.perf_counter() - start
    rate = len(pairs) / elapsed if elapsed > 0 else 0.0
    print(
        f"scored {len(pairs)} pairs -> {args.output} in {elapsed:.1f}s ({rate:.0f} pairs/s)", file=sys.stderr
    )
    return 0
