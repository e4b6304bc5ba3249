"""The ``--backend`` option shared by ``bgekit encode``, ``bgekit index`` and ``bgekit serve``."""

from __future__ import annotations

import argparse


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|onnx|openvino|auto`` (default: the model's own rule, PyTorch unless int8 is asked for).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_backend_argument(parser)
        >>> parser.parse_args(["--backend", "auto"]).backend
        'auto'
    """
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "openvino", "auto"],
        default=None,
        help="auto: measure PyTorch, ONNX Runtime and OpenVINO (if installed; and bf16 with --dtype auto) "
        "once on this machine, keep the fastest at full quality (cached)",
    )
