"""Quantise an embedder or a cross-encoder to static int8, calibrated on a sample of your own texts, and
save it by path.

The texts come from ``--corpus``: a corpus JSONL (``_id``, ``title``, ``text``, as ``bgekit encode``
reads) or a plain text file with one text per line. A seeded random sample of ``--samples`` texts
calibrates the activation ranges; ``--held-out`` other texts check the result, and a graph whose minimum
cosine to fp32 on them is below ``--threshold`` is refused (nothing is written). ``--queries`` adds a
sample of your own queries (a queries JSONL, or one per line): some calibrate, the others are checked as
queries, so short queries are held to the threshold too. The output folder holds
the model's files and the calibrated graph; load it with
``Embedder(OUT, quantization="int8-static")``, or, calibrated with ``--backend openvino``,
``Embedder(OUT, backend="openvino", quantization="int8-static")``.

A cross-encoder calibrates on ``--pairs`` instead: a JSONL of ``{"query", "passage"}`` lines, as ``bgekit
rerank --input`` reads. A seeded sample of whole queries (each with all its pairs) gives up to
``--samples`` + ``--held-out`` pairs; the last queries' ``--held-out`` pairs check the result, and a graph
whose scores rank one query's held-out pairs with a Spearman correlation to fp32 below ``--threshold`` is
refused. Load it with ``Reranker(OUT, quantization="int8-static"[, backend="openvino"])``.

Example:
    bgekit quantize --model all-MiniLM-L6-v2 --corpus corpus.jsonl --out minilm-int8
    bgekit quantize --backend openvino --model all-MiniLM-L6-v2 --corpus corpus.jsonl --out minilm-ov-int8
    bgekit quantize --model all-MiniLM-L6-v2 --corpus corpus.jsonl --queries queries.jsonl --out minilm-int8
    bgekit quantize --backend openvino --model my-cross-encoder --pairs pairs.jsonl --out ce-ov-int8
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

from bgekit.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (or hub name) to quantise")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument(
        "--corpus", help="an embedder's texts: corpus JSONL, or a text file with one text per line"
    )
    texts.add_argument(
        "--pairs", help="a cross-encoder's (query, passage) pairs: JSONL with 'query' and 'passage' per line"
    )
    parser.add_argument("--out", required=True, help="folder to write the model with its calibrated graph to")
    parser.add_argument(
        "--queries",
        default=None,
        help="queries JSONL (_id, text), or a text file with one query per line: a sample of up to "
        "--samples + --held-out also calibrates, its held-out part is checked as queries",
    )
    parser.add_argument(
        "--samples", type=int, default=300, help="texts (or pairs) to calibrate on (default 300)"
    )
    parser.add_argument(
        "--held-out", type=int, default=100, help="other texts (or pairs) that check the result"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.995,
        help="lowest held-out cosine to fp32 kept (with --pairs: lowest Spearman within a query)",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="token limit of the texts (default: the model's own)"
    )
    parser.add_argument(
        "--keep-fp32",
        default="auto",
        help="MatMul groups left in fp32, comma-separated (ffn-output, first-ffn-output, ffn-input, "
        "attention-qkv, last-layer; 'none' for none), or 'auto' (default): the fewest that reach --threshold",
    )
    parser.add_argument(
        "--backend",
        choices=["onnx", "openvino"],
        default="onnx",
        help="runtime the graph is calibrated for: ONNX Runtime (default) or OpenVINO (bgekit[openvino])",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the text sample")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def read_texts(path: str, option: str = "--corpus") -> list[str | dict[str, str]]:
    """The texts of a corpus JSONL (title and text), a queries JSONL (``option="--queries"``: text) or a
    plain file (one per non-empty line)."""
    from bgekit.io import iter_text_lines, read_corpus, read_queries

    if not os.path.isfile(path):
        raise InputError(f"{option} {path!r} is not a file")
    if path.endswith((".jsonl", ".json")):
        if option == "--queries":
            return list(read_queries(path).values())
        return list(read_corpus(path).values())
    return [line.strip() for _, line in iter_text_lines(path) if line.strip()]


def keep_fp32_groups(value: str) -> str | list[str]:
    """``--keep-fp32``: 'auto', 'none' (an empty list), or a comma-separated list of groups."""
    if value == "auto":
        return value
    return [] if value == "none" else [g.strip() for g in value.split(",") if g.strip()]


def _calibration_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options an embedder's and a cross-encoder's calibration share, from the command line."""
    return {
        "held_out": args.held_out,
        "threshold": args.threshold,
        "max_length": args.max_length,
        "keep_fp32": keep_fp32_groups(args.keep_fp32),
        "backend": args.backend,
    }


def sample_pairs(pairs: list[tuple[str, Any]], wanted: int, seed: int) -> list[tuple[str, Any]]:
    """Up to ``wanted`` pairs, whole queries at a time in a seeded order, so the held-out pairs at the end
    are whole rankings.

    Example:
        >>> sample_pairs([("a", "1"), ("b", "2"), ("a", "3")], 2, seed=0)
        [('a', '1'), ('a', '3')]
    """
    by_query: dict[str, list[tuple[str, Any]]] = {}
    for pair in pairs:
        by_query.setdefault(pair[0], []).append(pair)
    order = list(by_query)
    random.Random(seed).shuffle(order)
    return [pair for query in order for pair in by_query[query]][:wanted]


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"--out {args.out!r} exists; pass --overwrite to replace it")
    if args.samples < 16:
        raise InputError(f"--samples {args.samples} is too few; give at least 16")
    if args.pairs is not None:
        return _run_pairs(args)
    from bgekit.inference.calibrate import calibrate_int8

    texts = read_texts(args.corpus)
    wanted = args.samples + args.held_out
    if len(texts) > wanted:
        texts = random.Random(args.seed).sample(texts, wanted)
    queries = None
    if args.queries is not None:
        queries = [str(q) for q in read_texts(args.queries, "--queries")]
        if len(queries) > wanted:
            queries = random.Random(args.seed).sample(queries, wanted)
    report = calibrate_int8(args.model, texts, args.out, queries=queries, **_calibration_options(args))
    calibrated = f"{report.calibration_texts} texts" + (
        f" and {report.calibration_queries} queries" if queries else ""
    )
    checked = f"{report.held_out_texts} held-out texts" + (
        f" and {report.held_out_queries} queries (queries alone: min {report.query_min_cosine:.5f})"
        if queries
        else ""
    )
    print(
        f"calibrated on {calibrated}; on {checked} the "
        f"int8 vectors reach cosine min {report.min_cosine:.5f}, mean {report.mean_cosine:.5f} to fp32 "
        f"({len(report.fp32_nodes)} MatMuls left unquantised: {', '.join(report.fp32_groups) or 'none'}) "
        f"-> {args.out}; load it with backend={args.backend!r}, quantization='int8-static'",
        file=sys.stderr,
    )
    print("tried, in order: " + "; ".join(report.tried), file=sys.stderr)
    return 0


def _run_pairs(args: argparse.Namespace) -> int:
    from bgekit.cli.rerank import read_pairs
    from bgekit.inference.calibrate import calibrate_reranker_int8

    if args.queries is not None:
        raise InputError("--queries calibrates an embedder; a cross-encoder's --pairs carry their queries")
    if not os.path.isfile(args.pairs):
        raise InputError(f"--pairs {args.pairs!r} is not a file")
    pairs = sample_pairs(read_pairs(args.pairs)[0], args.samples + args.held_out, args.seed)
    report = calibrate_reranker_int8(args.model, pairs, args.out, **_calibration_options(args))
    print(
        f"calibrated on {report.calibration_pairs} pairs; on {report.held_out_pairs} held-out pairs the int8 "
        f"scores rank each query's pairs with Spearman min {report.min_spearman:.5f}, mean "
        f"{report.mean_spearman:.5f} to fp32 (scores within {report.max_score_difference:.4f}; "
        f"{len(report.fp32_nodes)} MatMuls left unquantised: {', '.join(report.fp32_groups) or 'none'}) -> "
        f"{args.out}; load it with Reranker(..., backend={args.backend!r}, quantization='int8-static')",
        file=sys.stderr,
    )
    print("tried, in order: " + "; ".join(report.tried), file=sys.stderr)
    return 0
