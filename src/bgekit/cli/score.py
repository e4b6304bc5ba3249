"""Add teacher scores (pos_scores / neg_scores) from a reranker to training JSONL, for distillation."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reranker", required=True, help="reranker: hub name or local folder")
    parser.add_argument("--input", required=True, help="training JSONL with query, pos, neg per line")
    parser.add_argument("--output", required=True, help="where to write the scored JSONL")
    parser.add_argument("--batch-size", type=int, default=None, help="reranker batch size")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="one reranker worker per device")


def run(args: argparse.Namespace) -> int:
    from bgekit import Reranker
    from bgekit.finetune.scoring import score_file

    kwargs = {
        k: v
        for k, v in {"batch_size": args.batch_size, "dtype": args.dtype, "devices": args.devices}.items()
        if v
    }
    start = time.perf_counter()
    reranker = Reranker(args.reranker, **kwargs)
    try:
        count = score_file(reranker, args.input, args.output)
    finally:
        close = getattr(reranker, "close", None)
        if close is not None:
            close()
    print(f"scored {count} lines -> {args.output} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
