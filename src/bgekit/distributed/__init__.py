"""Beyond one machine: encode a corpus on a Ray cluster into Parquet shards (extra ``[ray]``).

``encode_with_ray`` is the one-call path (read JSONL/Parquet, encode with an actor pool, write resumable
shards); ``RayEncoder`` is the callable class for your own ``ray.data.Dataset.map_batches`` pipelines;
``read_shards`` turns the shards back into arrays. Nothing here is imported by ``import bgekit``: without
Ray installed, using these names raises a ConfigError saying ``pip install 'bgekit[ray]'``.

Example:
    >>> from bgekit.distributed import encode_with_ray   # doctest: +SKIP
    >>> encode_with_ray("BAAI/bge-m3", "corpus.jsonl", "emb/", num_actors=4, gpus_per_actor=1)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "encode_with_ray": "bgekit.distributed.ray_encode",
    "RayEncoder": "bgekit.distributed.ray_encode",
    "ShardEncoder": "bgekit.distributed.ray_encode",
    "RayEncodeResult": "bgekit.distributed.ray_encode",
    "build_search_index": "bgekit.distributed.ray_encode",
    "read_shards": "bgekit.distributed.shards",
    "EncodedShards": "bgekit.distributed.shards",
    "TextFields": "bgekit.distributed.shards",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Ray and pyarrow load on first use, so that `import bgekit.distributed` works without the extra
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bgekit.distributed' has no attribute {name!r}")
