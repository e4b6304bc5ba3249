"""BGE-M3's own scores as a second stage: ColBERT (multi-vector), sparse and dense, mixed as FlagEmbedding does.

An index keeps no ColBERT vectors (they take one vector per token); the first stage retrieves with dense,
sparse or hybrid scores, then :class:`M3Rescorer` scores each retrieved (query, passage) pair with all
three heads from one pass, as ``BGEM3FlagModel.compute_score`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bgekit.errors import ConfigError
from bgekit.inference.m3 import SCORE_KEYS, validate_mode_weights

DEFAULT_M3_WEIGHTS = (0.4, 0.2, 0.4)
"""[dense, sparse, ColBERT] weights of BGE-M3's model card for its combined score."""


class M3Rescorer:
    """A reranker (``compute_score(pairs)``) made of a BGE-M3 embedder's ``compute_score``.

    Args:
        embedder: a BGE-M3 ``bgekit.Embedder`` (usually the index's own).
        mode: which of ``compute_score``'s scores ranks: ``"colbert+sparse+dense"`` (default),
            ``"colbert"``, ``"sparse+dense"``, ``"dense"`` or ``"sparse"``.
        weights: [dense, sparse, ColBERT] weights of the mixed scores.

    Example:
        >>> hits = index.search("what is bge?", top_k=5, reranker=M3Rescorer(index.embedder))  # doctest: +SKIP
    """

    def __init__(
        self,
        embedder: Any,
        mode: str = "colbert+sparse+dense",
        weights: Sequence[float] = DEFAULT_M3_WEIGHTS,
    ) -> None:
        if getattr(embedder, "m3_heads", None) is None:
            raise ConfigError("M3Rescorer needs a BGE-M3 embedder (with its sparse and ColBERT heads)")
        if mode not in SCORE_KEYS:
            raise ConfigError(f"mode={mode!r} is not valid; choose one of {list(SCORE_KEYS)}")
        self.embedder, self.mode, self.weights = embedder, mode, validate_mode_weights(weights)
        self.name_or_path = f"{getattr(embedder, 'name_or_path', 'bge-m3')} ({mode})"

    def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        scores = self.embedder.compute_score(pairs, weights_for_different_modes=self.weights)[self.mode]
        return [float(s) for s in scores]
