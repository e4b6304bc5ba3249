"""Encoder outputs as arrays: the dense vectors of any embedder's result, checked, as float32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bgekit.errors import InputError


def dense_array(output: Any, count: int | None = None) -> np.ndarray:
    """The dense vectors of an ``encode*`` result as a C-contiguous float32 (n, dim) array.

    Plain embedders return the array itself; BGE-M3 returns FlagEmbedding's dict, whose
    ``dense_vecs`` are taken. ``count`` checks the number of rows.

    Example:
        >>> dense_array({"dense_vecs": np.ones((2, 3)), "lexical_weights": None}).shape
        (2, 3)
    """
    if isinstance(output, Mapping):
        if output.get("dense_vecs") is None:
            raise InputError("the embedder returned no 'dense_vecs'; dense search needs return_dense=True")
        output = output["dense_vecs"]
    if isinstance(output, torch.Tensor):
        output = output.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(output, dtype=np.float32)
    if vectors.ndim != 2 or (count is not None and vectors.shape[0] != count):
        raise InputError(f"the embedder returned shape {vectors.shape} for {count} texts; expected (n, dim)")
    return vectors
