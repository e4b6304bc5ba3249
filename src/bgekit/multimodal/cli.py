"""What ``bgekit index --images`` runs: an image corpus (a folder or a JSONL) into a ``MultimodalIndex``."""

from __future__ import annotations

import argparse
import sys
import time

from bgekit.errors import ConfigError
from bgekit.index.ann import AnnConfig


def index_images(args: argparse.Namespace, ann: AnnConfig) -> int:
    """Encode ``args.corpus`` (a folder of images or a JSONL with ``image``/``text`` rows) with a
    ``MultimodalEmbedder`` and save the index to ``args.output``."""
    from bgekit.multimodal.embedder import MultimodalEmbedder
    from bgekit.multimodal.index import MultimodalIndex

    unsupported = [
        flag
        for flag, given in (
            ("--store", args.store is not None),
            ("--ray", getattr(args, "ray", None) is not None),
            ("--quantization", args.quantization is not None),
            ("--trust-remote-code", args.trust_remote_code),
            ("--no-sparse", args.no_sparse),
        )
        if given
    ]
    if unsupported:
        raise ConfigError(
            f"--images builds an index folder (--output) on one process; drop {', '.join(unsupported)}"
        )
    start = time.perf_counter()
    with MultimodalEmbedder(
        args.model, dtype=args.dtype, batch_size=args.batch_size, devices=args.devices, show_progress=False
    ) as embedder:
        index = MultimodalIndex.build(
            embedder, args.corpus, chunk_size=args.chunk_size, show_progress=not args.no_progress, ann=ann
        )
    index.save(args.output)
    print(
        f"indexed {len(index)} documents ({index.info['images']} images) -> {args.output} in "
        f"{time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    return 0
