"""Heads that turn a backbone's hidden states into outputs: pooling, Matryoshka truncation, normalisation.

M3's sparse (lexical) and multi-vector (ColBERT) heads live here too; a model is a backbone plus heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) into (batch, dim).

    ``cls`` takes the first position; ``mean`` averages the unmasked positions; ``last_token`` takes the
    last unmasked position, correct for both left and right padding.

    Example:
        >>> h = torch.arange(12.0).reshape(1, 3, 4); m = torch.tensor([[1, 1, 0]])
        >>> pool(h, m, "mean").tolist()
        [[2.0, 3.0, 4.0, 5.0]]
    """
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / counts
    if method == "last_token":
        left_padded = bool(attention_mask[:, -1].all())
        if left_padded:
            return hidden[:, -1]
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling method {method!r}; choose 'cls', 'mean' or 'last_token'")


def finish_dense(vectors: torch.Tensor, *, truncate_dim: int | None, normalize: bool) -> torch.Tensor:
    """Matryoshka truncation first, then L2 normalisation (in float32 for accuracy)."""
    if truncate_dim is not None:
        vectors = vectors[:, :truncate_dim]
    vectors = vectors.float()
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=-1)
    return vectors
