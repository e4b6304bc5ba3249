"""The ``--ray`` options shared by ``bgekit encode`` and ``bgekit index``: cluster address and actor resources."""

from __future__ import annotations

import argparse
from typing import Any


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray cluster (pip install 'bgekit[ray]')")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="encode on a Ray cluster: ADDRESS ('auto', 'ray://head:10001', 'host:6379') or none for "
        "RAY_ADDRESS, else a new local Ray",
    )
    group.add_argument("--num-actors", type=int, default=None, help="actors (default: as resources allow)")
    group.add_argument("--cpus-per-actor", type=float, default=1, help="CPU cores each actor reserves")
    group.add_argument(
        "--gpus-per-actor", type=float, default=0, help="GPUs each actor reserves (1: GPU actors)"
    )
    group.add_argument("--shard-rows", type=int, default=None, help="rows per output part (unit of resume)")


def ray_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``encode_with_ray`` keyword arguments from the parsed ``--ray`` options."""
    kwargs: dict[str, Any] = {
        "address": args.ray or None,
        "num_actors": args.num_actors,
        "cpus_per_actor": args.cpus_per_actor,
        "gpus_per_actor": args.gpus_per_actor,
    }
    if args.shard_rows:
        kwargs["rows_per_shard"] = args.shard_rows
    return kwargs
