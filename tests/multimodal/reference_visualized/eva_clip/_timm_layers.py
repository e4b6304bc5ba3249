"""The three ``timm.layers`` helpers eva_vit_model.py imports, for a test run without timm.

timm imports torchvision, and PyPI's torchvision wheel for x86-64 Linux is built against CUDA torch: with
bgekit's CPU torch it fails on import. ``to_2tuple`` and ``trunc_normal_`` are what timm's are; ``drop_path``
only runs in training (the reference is only run in eval mode), so it is an identity here.
"""
import collections.abc
from itertools import repeat

from torch.nn.init import trunc_normal_  # noqa: F401  (same signature as timm's)


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return tuple(repeat(x, 2))


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    if drop_prob == 0.0 or not training:
        return x
    raise NotImplementedError("training-only: not part of the reference")
