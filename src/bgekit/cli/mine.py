"""Mine hard negatives for FlagEmbedding-style training JSONL (query/pos lines) with an embedder.

Each line's ``neg`` is replaced by passages sampled from the model's rank window ``--range`` over the
candidate corpus (``--corpus``; default: every pos/neg of the input), positives excluded, optionally
dropping candidates within a margin of the positive's score or scored high by a reranker.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="embedder: hub name or local folder")
    parser.add_argument("--input", required=True, help="training JSONL with query and pos per line")
    parser.add_argument("--output", required=True, help="where to write the mined JSONL")
    parser.add_argument("--corpus", default=None, help="candidate passages: JSONL with text (and title)")
    parser.add_argument("--range", default="10-210", help="rank window START-END to sample from (10-210)")
    parser.add_argument("--negatives", type=int, default=15, help="negatives per line (15)")
    parser.add_argument(
        "--relative-margin", type=float, default=None, help="drop scores > (1-m) * positive's"
    )
    parser.add_argument("--absolute-margin", type=float, default=None, help="drop scores > positive's - m")
    parser.add_argument("--reranker", default=None, help="reranker used to drop likely false negatives")
    parser.add_argument("--max-reranker-score", type=float, default=None, help="drop candidates scored above")
    parser.add_argument("--query-instruction", default=None, help="query instruction (default: the model's)")
    parser.add_argument(
        "--passage-instruction", default=None, help="passage instruction (default: the model's)"
    )
    parser.add_argument("--cache-dir", default=None, help="cache corpus embeddings here")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="one encoding worker per device")
    parser.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace) -> int:
    from bgekit import Embedder
    from bgekit.errors import ConfigError
    from bgekit.finetune.mining import MiningOptions, mine_file

    options = MiningOptions.from_range(
        args.range,
        negatives=args.negatives,
        relative_margin=args.relative_margin,
        absolute_margin=args.absolute_margin,
        max_reranker_score=args.max_reranker_score,
        seed=args.seed,
    )
    if args.reranker and args.max_reranker_score is None:
        raise ConfigError("--reranker needs --max-reranker-score (candidates scored above it are dropped)")
    reranker = None
    if args.reranker:
        from bgekit import Reranker

        reranker = Reranker(args.reranker)
    start = time.perf_counter()
    embedder = Embedder(
        args.model,
        query_instruction=args.query_instruction,
        passage_instruction=args.passage_instruction,
        dtype=args.dtype,
        batch_size=args.batch_size,
        devices=args.devices,
        show_progress=False,
    )
    try:
        count = mine_file(
            embedder,
            args.input,
            args.output,
            corpus_path=args.corpus,
            options=options,
            reranker=reranker,
            cache_dir=args.cache_dir,
        )
    finally:
        embedder.close()
    print(f"mined {count} lines -> {args.output} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
