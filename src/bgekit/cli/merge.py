"""Merge models of one architecture by weighted averaging (LM-Cocktail), for embedders and rerankers.

Weights are given (``--weights 0.5 0.5``; rescaled with a warning when they do not sum to 1), uniform by
default, or chosen from a few examples (``--example-data few.jsonl``: softmax of minus each model's loss
on the examples over ``--temperature``). The first model's config, tokenizer and ``bgekit.json`` are
copied beside the merged ``model.safetensors``; the output folder appears only once complete.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, help="two or more model folders or hub names")
    parser.add_argument("--output", required=True, help="folder to write the merged model to")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per model")
    group.add_argument(
        "--example-data",
        default=None,
        help="JSONL (query, pos, neg) to choose the weights from, LM-Cocktail style",
    )
    parser.add_argument(
        "--temperature", type=float, default=5.0, help="softmax temperature for --example-data"
    )
    parser.add_argument("--kind", choices=["auto", "embedder", "reranker"], default="auto")
    parser.add_argument("--max-examples", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--negatives", type=int, default=7, help="negatives per example in the loss")
    parser.add_argument("--device", default=None, help="device for the example losses (default: CUDA if any)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from bgekit.finetune.merge import merge_models

    model_kwargs = {"device": args.device} if args.device else {}
    weights = merge_models(
        args.models,
        args.output,
        args.weights,
        example_data=args.example_data,
        temperature=args.temperature,
        kind=args.kind,
        max_examples=args.max_examples,
        negatives=args.negatives,
        overwrite=args.overwrite,
        model_kwargs=model_kwargs,
    )
    shown = ", ".join(f"{name}={weight:.4f}" for name, weight in zip(args.models, weights, strict=True))
    print(f"merged {len(args.models)} models ({shown}) -> {args.output}", file=sys.stderr)
    return 0
