"""The scale-out figures in one run: Ray encoding, approximate faiss indexes, Milvus Lite.

Runs, one after the other, each in its own process with its defaults (or the arguments given after
``--``): ``scale_ray.py`` (Ray Data with 1 and 2 actors against the plain Embedder on SciFact, min cosine),
``scale_index.py`` (IVF/HNSW with SQ8/PQ recall@10 and queries/s against exact search on 1 million clustered
384-d vectors, and SciFact nDCG@10 of each structure) and ``scale_milvus.py`` (Milvus Lite insert and
dense/sparse/hybrid search rates against the in-memory SearchIndex, top-10 overlap).

Example:
    python benchmarks/scale.py                 # all three, as the README's rows were measured
    python benchmarks/scale.py --only ray
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"ray": "scale_ray.py", "index": "scale_index.py", "milvus": "scale_milvus.py"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        print(f"\n# {PARTS[name]}", flush=True)
        if subprocess.run([sys.executable, str(HERE / PARTS[name])], check=False).returncode != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
