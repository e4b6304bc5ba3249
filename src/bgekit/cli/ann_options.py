"""The ``--ann`` options of ``bgekit index`` (which dense structure to build) and the search-time knobs of
``bgekit search`` (``--nprobe``, ``--ef-search``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_ann_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("approximate dense search (big corpora; default: exact)")
    group.add_argument(
        "--ann",
        default=None,
        help="flat (exact, default) | ivf | hnsw | ivf-sq8 | ivf-pq | hnsw-sq8 | a faiss factory string "
        "such as IVF4096,PQ48",
    )
    group.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(n))")
    group.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per vector (default 32)")
    group.add_argument("--ef-construction", type=int, default=None, help="HNSW build candidates (default 40)")
    group.add_argument("--pq-m", type=int, default=None, help="PQ bytes per vector (default dim/8)")
    add_search_knobs(group)


def add_search_knobs(parser: Any) -> None:
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query (default 32)")
    parser.add_argument(
        "--ef-search", type=int, default=None, help="HNSW candidates kept while searching (default 64)"
    )
    parser.add_argument(
        "--refine-factor",
        type=int,
        default=None,
        help="fetch this many candidates per hit and rank them by exact scores (default 1)",
    )


def ann_of(args: argparse.Namespace) -> Any:
    """The ``AnnConfig`` the ``--ann`` options ask for."""
    from bgekit.index.ann import AnnConfig

    return AnnConfig.parse(
        args.ann,
        nlist=args.nlist,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        pq_m=args.pq_m,
        **search_knobs(args),
    )


def search_knobs(args: argparse.Namespace) -> dict[str, int]:
    """``SearchIndex.search`` keyword arguments from ``--nprobe``/``--ef-search``/``--refine-factor``."""
    given = {"nprobe": args.nprobe, "ef_search": args.ef_search, "refine_factor": args.refine_factor}
    return {name: value for name, value in given.items() if value is not None}
