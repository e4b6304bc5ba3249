"""The options of one ``encode`` or ``compute_score`` call, resolved and checked once.

A public method (``Embedder.encode*``, ``Reranker.compute_score``) takes the caller's keyword arguments,
fills what the caller left out from the model's settings, and hands the inner layers one frozen
:class:`EncodeOptions` or :class:`RerankOptions`; nothing below the public method picks a default again.

Example:
    >>> EncodeOptions.build("Embedder.encode", {"return_sparse": True}, max_length=512, batch_size=8,
    ...                     show_progress=None).return_sparse
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from bgekit.errors import ConfigError, InputError, reject_unknown_kwargs
from bgekit.inference.runtime import check_batch_size

SparseFormat = Literal["dict", "csr", "raw"]

_Options = TypeVar("_Options", bound="_CallOptions")


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r} is not valid; expected a positive integer")


@dataclass(frozen=True)
class _CallOptions:
    """What both kinds of call options share: construction from a caller's keyword arguments."""

    @classmethod
    def caller_fields(cls) -> tuple[str, ...]:
        """The option names a caller may pass (``position_offset`` is set by the worker split only)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "position_offset")

    @classmethod
    def build(cls: type[_Options], where: str, given: dict[str, Any], **resolved: Any) -> _Options:
        """The options from the caller's ``given`` keyword arguments and the ``resolved`` ones.

        Raises:
            ConfigError: an unknown name in ``given`` (the valid ones listed), or an invalid value.
        """
        valid = cls.caller_fields()
        reject_unknown_kwargs(where, {k: v for k, v in given.items() if k not in valid}, valid)
        return cls(**{**given, **resolved})


@dataclass(frozen=True)
class EncodeOptions(_CallOptions):
    """The resolved options of one embedder call.

    Attributes:
        max_length: token limit of each text (resolved by ``Embedder.prepare``).
        batch_size: most texts in one batch (resolved from the model's ``batch_size``).
        show_progress: progress bar (``None``: only for long inputs).
        convert_to_numpy / convert_to_tensor: numpy arrays (default) or torch tensors.
        return_dense / return_sparse / return_colbert_vecs: BGE-M3's heads to return.
        sparse_format: M3 lexical weights as ``"dict"``, ``"csr"`` or ``"raw"`` (sorted ids, weights).
    """

    max_length: int
    batch_size: int
    show_progress: bool | None
    convert_to_numpy: bool = True
    convert_to_tensor: bool = False
    return_dense: bool = True
    return_sparse: bool = False
    return_colbert_vecs: bool = False
    sparse_format: SparseFormat = "dict"

    def __post_init__(self) -> None:
        _check_positive("max_length", self.max_length)
        object.__setattr__(self, "batch_size", check_batch_size(self.batch_size))
        if self.sparse_format not in ("dict", "csr", "raw"):
            raise InputError(f"sparse_format={self.sparse_format!r} is not valid; choose 'dict' or 'csr'")

    @property
    def as_tensor(self) -> bool:
        return self.convert_to_tensor or not self.convert_to_numpy


@dataclass(frozen=True)
class RerankOptions(_CallOptions):
    """The resolved options of one ``Reranker.compute_score`` call.

    Attributes:
        batch_size: most pairs in one batch.
        max_length: token limit of a pair.
        query_max_length: token limit of the query alone (3/4 of ``max_length`` unless given).
        normalize: apply a sigmoid to the scores.
        prompt: the LLM reranker's question (``None``: the checkpoint's default).
        cutoff_layers / compress_layers / compress_ratio: layer-wise and lightweight options.
        show_progress: progress bar (``None``: only for long inputs).
        position_offset: where this slice starts in the caller's pairs (for error messages).
    """

    batch_size: int
    max_length: int
    query_max_length: int
    normalize: bool
    prompt: str | None
    cutoff_layers: list[int] | None
    compress_layers: list[int] | None
    compress_ratio: int | None
    show_progress: bool | None
    position_offset: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_batch_size(self.batch_size))
        _check_positive("max_length", self.max_length)
        _check_positive("query_max_length", self.query_max_length)
        for name in ("cutoff_layers", "compress_layers"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if value is not None:
                object.__setattr__(self, name, [int(v) for v in value])

    def at(self, position_offset: int) -> RerankOptions:
        """The same options for a worker's slice starting at ``position_offset`` (no progress bar)."""
        return dataclasses.replace(self, show_progress=False, position_offset=position_offset)
