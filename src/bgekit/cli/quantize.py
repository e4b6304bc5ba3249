"""Quantise an embedder to static int8, calibrated on a sample of your own texts, and save it by path.

The texts come from ``--corpus``: a corpus JSONL (``_id``, ``title``, ``text``, as ``bgekit encode``
reads) or a plain text file with one text per line. A seeded random sample of ``--samples`` texts
calibrates the activation ranges; ``--held-out`` other texts check the result, and a graph whose minimum
cosine to fp32 on them is below ``--threshold`` is refused (nothing is written). ``--queries`` adds a
sample of your own queries (a queries JSONL, or one per line): some calibrate, the others are checked as
queries, so short queries are held to the threshold too. The output folder holds
the model's files and the calibrated graph; load it with
``Embedder(OUT, quantization="int8-static")``, or, calibrated with ``--backend openvino``,
``Embedder(OUT, backend="openvino", quantization="int8-static")``.

Example:
    bgekit quantize --model all-MiniLM-L6-v2 --corpus corpus.jsonl --out minilm-int8
    bgekit quantize --backend openvino --model all-MiniLM-L6-v2 --corpus corpus.jsonl --out minilm-ov-int8
    bgekit quantize --model all-MiniLM-L6-v2 --corpus corpus.jsonl --queries queries.jsonl --out minilm-int8
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from bgekit.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (or hub name) to quantise")
    parser.add_argument("--corpus", required=True, help="corpus JSONL, or a text file with one text per line")
    parser.add_argument("--out", required=True, help="folder to write the model with its calibrated graph to")
    parser.add_argument(
        "--queries",
        default=None,
        help="queries JSONL (_id, text), or a text file with one query per line: a sample of up to "
        "--samples + --held-out also calibrates, its held-out part is checked as queries",
    )
    parser.add_argument("--samples", type=int, default=300, help="texts to calibrate on (default 300)")
    parser.add_argument("--held-out", type=int, default=100, help="other texts that check the result")
    parser.add_argument("--threshold", type=float, default=0.995, help="lowest held-out cosine to fp32 kept")
    parser.add_argument(
        "--max-length", type=int, default=None, help="token limit of the texts (default: the model's own)"
    )
    parser.add_argument(
        "--keep-fp32",
        default="auto",
        help="MatMul groups left in fp32, comma-separated (ffn-output, ffn-input, attention-qkv, last-layer; "
        "'none' for none), or 'auto' (default): the fewest that reach --threshold",
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


def run(args: argparse.Namespace) -> int:
    from bgekit.inference.calibrate import calibrate_int8

    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"--out {args.out!r} exists; pass --overwrite to replace it")
    if args.samples < 16:
        raise InputError(f"--samples {args.samples} is too few; give at least 16")
    texts = read_texts(args.corpus)
    wanted = args.samples + args.held_out
    if len(texts) > wanted:
        texts = random.Random(args.seed).sample(texts, wanted)
    queries = None
    if args.queries is not None:
        queries = [str(q) for q in read_texts(args.queries, "--queries")]
        if len(queries) > wanted:
            queries = random.Random(args.seed).sample(queries, wanted)
    report = calibrate_int8(
        args.model,
        texts,
        args.out,
        held_out=args.held_out,
        threshold=args.threshold,
        max_length=args.max_length,
        keep_fp32=keep_fp32_groups(args.keep_fp32),
        backend=args.backend,
        queries=queries,
    )
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
    return 0
