"""Reranker training losses: pure functions on grouped scores.

Notation: ``B`` queries, each with a group of ``G`` passages (the positive first, then ``G - 1`` hard
negatives); ``s_bj`` is the reranker's score (logit) of passage ``j`` for query ``b``, a (B, G) tensor.
Teacher scores ``t_bj`` (``pos_scores``/``neg_scores`` of the training data) have the same shape.

The formulas are FlagEmbedding's (``AbsRerankerModel`` and the layer-wise ``CrossDecoderModel``): the
same targets and reductions, so losses are comparable with its logs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bgekit.errors import ConfigError


def _check_grouped(scores: torch.Tensor, name: str = "scores") -> None:
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ConfigError(f"{name} must have shape (queries, group size), got {tuple(scores.shape)}")


def group_scores(flat_scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape scores of ``B * G`` pairs (ordered group by group) into (B, G).

    Example:
        >>> group_scores(torch.arange(6.0), 3).tolist()
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    flat = flat_scores.reshape(-1)
    if group_size < 1 or flat.numel() % group_size:
        raise ConfigError(f"{flat.numel()} scores cannot be cut into groups of {group_size}")
    return flat.view(-1, group_size)


def grouped_cross_entropy(scores: torch.Tensor) -> torch.Tensor:
    """The positive against its own group's negatives:

    ``L = -(1/B) * sum_b log( exp(s_b0) / sum_j exp(s_bj) )``

    Example:
        >>> round(float(grouped_cross_entropy(torch.zeros(2, 4))), 4)   # log 4
        1.3863
    """
    _check_grouped(scores)
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)


def soft_label_distillation(scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's distribution over each group:

    ``L = -(1/B) * sum_b sum_j softmax(t_b)_j * log softmax(s_b)_j``

    (equal to ``KL(softmax(t_b) || softmax(s_b))`` plus the teacher's entropy, which has no gradient).
    Teacher scores are detached.

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[2.0, 0.0]])
        >>> round(float(soft_label_distillation(s, t)), 4)   # the entropy of softmax([2, 0])
        0.3653
    """
    _check_grouped(scores)
    if teacher_scores.shape != scores.shape:
        raise ConfigError(
            f"teacher scores have shape {tuple(teacher_scores.shape)} but the student's are {tuple(scores.shape)}"
        )
    targets = torch.softmax(teacher_scores.detach().float().to(scores.device), dim=-1)
    return -(targets * torch.log_softmax(scores.float(), dim=-1)).sum(dim=-1).mean()


def reranker_loss(
    scores: torch.Tensor, teacher_scores: torch.Tensor | None = None, *, kd_weight: float = 1.0
) -> torch.Tensor:
    """Grouped cross-entropy, plus ``kd_weight`` times soft-label distillation when teacher scores are given:

    ``L = CE(s) + kd_weight * KD(s, t)`` (FlagEmbedding adds the two with weight 1).

    Example:
        >>> float(reranker_loss(torch.zeros(1, 2))) == float(grouped_cross_entropy(torch.zeros(1, 2)))
        True
    """
    loss = grouped_cross_entropy(scores)
    if teacher_scores is not None and kd_weight:
        loss = loss + kd_weight * soft_label_distillation(scores, teacher_scores)
    return loss


def layerwise_loss(
    layer_scores: Sequence[torch.Tensor] | torch.Tensor,
    teacher_scores: torch.Tensor | None = None,
    *,
    distill_from_last: bool = True,
) -> torch.Tensor:
    """The layer-wise reranker's loss, one term per chosen layer ``l = 1..L`` (the last is the deepest):

    ``L = sum_l CE(s^l) + D`` where, with teacher scores ``t``, ``D = sum_l KD(s^l, t)``; without them and
    with ``distill_from_last``, ``D = sum_{l<L} KD(s^l, stopgrad(s^L))`` (shallow layers learn the deepest
    layer's ranking); otherwise ``D = 0``.

    Args:
        layer_scores: (B, G) scores per layer, shallowest first, as a list or an (L, B, G) tensor.

    Example:
        >>> round(float(layerwise_loss([torch.zeros(1, 4), torch.zeros(1, 4)], distill_from_last=False)), 4)
        2.7726
    """
    layers = list(layer_scores.unbind(0)) if isinstance(layer_scores, torch.Tensor) else list(layer_scores)
    if not layers:
        raise ConfigError("layerwise_loss needs the scores of at least one layer")
    loss = sum((grouped_cross_entropy(s) for s in layers), torch.zeros((), device=layers[0].device))
    if teacher_scores is not None:
        for s in layers:
            loss = loss + soft_label_distillation(s, teacher_scores)
    elif distill_from_last:
        deepest = layers[-1].detach()
        for s in layers[:-1]:
            loss = loss + soft_label_distillation(s, deepest)
    return loss
