"""Best-first ordering: the one rule by which every reranked list in bgekit is sorted."""

from __future__ import annotations

from collections.abc import Sequence


def ranked_indices(scores: Sequence[float], top_k: int | None = None) -> list[int]:
    """Positions of ``scores`` best first, the best ``top_k`` (all by default); equal scores keep their
    input order (a stable sort), the rule of ``Reranker.rank`` and of every reranked list in bgekit.

    Example:
        >>> ranked_indices([0.5, 2.0, 0.5], top_k=2)
        [1, 0]
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if top_k is None else order[:top_k]
