"""Convert an official Visualized-BGE checkpoint (.pth) into a folder MultimodalEmbedder loads.

The folder (config.json, tokenizer, model.safetensors, bgekit.json) is written atomically; then
``bgekit index --images``, ``bgekit search``, ``bgekit eval`` and ``bgekit serve`` take it as --model.

Example:
    bgekit convert-visualized --checkpoint Visualized_base_en_v1.5.pth --text-model bge-base-en-v1.5/ \\
        --output vis-bge-base/
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="Visualized_base_en_v1.5.pth or Visualized_m3.pth (a state dict)"
    )
    parser.add_argument(
        "--text-model",
        required=True,
        help="the BGE text model's folder (bge-base-en-v1.5 or bge-m3): its config and tokenizer are used",
    )
    parser.add_argument("--output", required=True, help="folder to write (replaced as a whole)")
    parser.add_argument(
        "--head-width", type=int, default=64, help="vision tower head width (default: 64, EVA02-CLIP)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="text token limit to save (default: the text model's)"
    )


def run(args: argparse.Namespace) -> int:
    from bgekit.multimodal.visualized import convert_visualized_bge

    start = time.perf_counter()
    output = convert_visualized_bge(
        args.checkpoint,
        args.text_model,
        args.output,
        head_width=args.head_width,
        max_length=args.max_length,
    )
    print(f"converted {args.checkpoint} -> {output} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
