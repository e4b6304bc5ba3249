"""Contrastive and distillation losses for embedder training: pure functions on embedding tensors.

Notation used in the docstrings: ``B`` queries, each with a group of ``G`` passages (the positive
first, then ``G - 1`` hard negatives), so ``B * G`` passages ordered group by group; ``q_i`` and
``p_j`` are (usually L2-normalised) embeddings and ``s_ij = q_i . p_j / tau`` with temperature ``tau``.
The positive of query ``i`` is passage ``i * G`` in the batch and passage ``0`` of its own group.

Everything here matches FlagEmbedding's ``AbsEmbedderModel`` (same targets, same reductions), except
cross-device negatives, which keep the reported loss equal to one process computing the whole global
batch (see :func:`gather_keep_local_grad`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bgekit.errors import ConfigError

KdLossType = Literal["kl_div", "m3_kd_loss"]


def similarity(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``s_ij = q_i . p_j / tau``: the (B, N) score matrix of queries against passages.

    Example:
        >>> similarity(torch.eye(2), torch.eye(2), 0.5).tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    return q @ p.transpose(0, 1) / temperature


def own_group_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """From the (B, B*G) matrix, each query's scores on its own group: (B, G), ``out[i, k] = s[i, i*G + k]``.

    Example:
        >>> own_group_scores(torch.arange(8.0).reshape(2, 4), 2).tolist()
        [[0.0, 1.0], [6.0, 7.0]]
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    cols = rows.unsqueeze(1) * group_size + torch.arange(group_size, device=scores.device)
    return scores[rows.unsqueeze(1), cols]


def in_batch_infonce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over in-batch and hard negatives.

    ``L = -1/B * sum_i log( exp(s_{i, iG}) / sum_{j < B*G} exp(s_ij) )``: every passage of the batch
    (other queries' positives and negatives included) is a negative for query ``i``.

    Example:
        >>> q = F.normalize(torch.randn(2, 4), dim=-1); p = F.normalize(torch.randn(6, 4), dim=-1)
        >>> in_batch_infonce(q, p, 0.02).ndim
        0
    """
    group_size = p.shape[0] // q.shape[0]
    scores = similarity(q, p, temperature)
    targets = torch.arange(q.shape[0], device=q.device) * group_size
    return F.cross_entropy(scores, targets)


def own_group_infonce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over each query's own group only (no in-batch negatives).

    ``L = -1/B * sum_i log( exp(s_{i, iG}) / sum_{k < G} exp(s_{i, iG+k}) )``.
    """
    group_size = p.shape[0] // q.shape[0]
    local = own_group_scores(similarity(q, p, temperature), group_size)
    return F.cross_entropy(local, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def teacher_targets(teacher_scores: torch.Tensor) -> torch.Tensor:
    """Teacher distribution over each group: ``t_ik = softmax_k(teacher_scores_ik)`` (no temperature,
    as FlagEmbedding)."""
    return torch.softmax(teacher_scores, dim=-1)


def kl_div_loss(student_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """FlagEmbedding's ``kl_div`` distillation: cross-entropy of the student's group scores against the
    teacher distribution (KL divergence up to the teacher's constant entropy).

    ``L = -1/B * sum_i sum_k t_ik * log softmax_k(s_ik)`` with ``s`` the (B, G) own-group scores.

    Example:
        >>> t = teacher_targets(torch.tensor([[2.0, 0.0]])); s = torch.tensor([[1.0, 1.0]])
        >>> round(float(kl_div_loss(s, t)), 4)
        0.6931
    """
    return -(torch.log_softmax(student_scores, dim=-1) * targets).sum(dim=-1).mean()


def m3_kd_loss(
    scores: torch.Tensor, targets: torch.Tensor, group_size: int, *, in_batch: bool = True
) -> torch.Tensor:
    """BGE-M3's distillation loss: one cross-entropy per group member, weighted by the teacher.

    For each member ``k`` of query ``i``'s group (column ``c_ik = i*G + k`` of the (B, B*G) scores, or
    ``k`` of the (B, G) own-group scores when ``in_batch`` is false), the candidates are every column
    except the members ``0..k-1`` already used as targets:

    ``L = sum_k 1/B * sum_i t_ik * -log( exp(s_{i,c_ik}) / sum_{j not in {c_i0..c_i(k-1)}} exp(s_ij) )``.

    Example:
        >>> s = torch.zeros(1, 2); t = torch.tensor([[1.0, 0.0]])
        >>> round(float(m3_kd_loss(s, t, 2)), 4)
        0.6931
    """
    rows = scores.shape[0]
    base = torch.arange(rows, device=scores.device) * (group_size if in_batch else 0)
    loss = scores.new_zeros(())
    mask = torch.zeros_like(scores)
    for k in range(group_size):
        target = base + k
        per_row = F.cross_entropy(scores + mask, target, reduction="none")
        loss = loss + (targets[:, k] * per_row).mean()
        mask = torch.scatter(mask, 1, target.unsqueeze(1), torch.finfo(scores.dtype).min)
    return loss


def scores_loss(
    scores: torch.Tensor,
    group_size: int,
    *,
    teacher_scores: torch.Tensor | None = None,
    kd_loss_type: KdLossType = "kl_div",
    in_batch_negatives: bool = True,
) -> torch.Tensor:
    """The embedder loss from a (B, B*G) score matrix already divided by the temperature.

    The same combination as :func:`embedder_loss` (which computes ``scores`` from embeddings); BGE-M3's
    sparse, ColBERT and ensemble scores go through it too.
    """
    rows = scores.shape[0]
    if scores.shape[1] != rows * group_size:
        raise ConfigError(f"scores of shape {tuple(scores.shape)} do not hold {rows} groups of {group_size}")
    local = own_group_scores(scores, group_size)
    first = torch.zeros(rows, dtype=torch.long, device=scores.device)
    positives = torch.arange(rows, device=scores.device) * group_size
    if teacher_scores is None:
        return F.cross_entropy(scores, positives) if in_batch_negatives else F.cross_entropy(local, first)
    if teacher_scores.shape != (rows, group_size):
        raise ConfigError(
            f"teacher scores have shape {tuple(teacher_scores.shape)}; expected ({rows}, {group_size})"
        )
    targets = teacher_targets(teacher_scores.to(device=scores.device, dtype=scores.dtype))
    if kd_loss_type == "kl_div":
        ce = F.cross_entropy(scores, positives) if in_batch_negatives else F.cross_entropy(local, first)
        return kl_div_loss(local, targets) + ce
    if kd_loss_type == "m3_kd_loss":
        if in_batch_negatives:
            return m3_kd_loss(scores, targets, group_size, in_batch=True)
        return m3_kd_loss(local, targets, group_size, in_batch=False)
    raise ConfigError(f"kd_loss_type={kd_loss_type!r} is not valid; choose 'kl_div' or 'm3_kd_loss'")


def embedder_loss(
    q: torch.Tensor,
    p: torch.Tensor,
    *,
    temperature: float,
    teacher_scores: torch.Tensor | None = None,
    kd_loss_type: KdLossType = "kl_div",
    in_batch_negatives: bool = True,
) -> torch.Tensor:
    """The full embedder loss for one batch, as FlagEmbedding combines the pieces.

    - no teacher: :func:`in_batch_infonce` (or :func:`own_group_infonce` without in-batch negatives);
    - ``kl_div``: ``kl_div_loss(own-group scores, t) + InfoNCE`` (the InfoNCE term keeps the positive
      first even where the teacher disagrees);
    - ``m3_kd_loss``: :func:`m3_kd_loss` alone (on the whole batch's scores, or the group's).

    Args:
        q: (B, d) query embeddings.
        p: (B*G, d) passage embeddings, group by group, positives first.
        temperature: ``tau``.
        teacher_scores: (B, G) raw teacher scores, turned into targets by :func:`teacher_targets`.
        kd_loss_type: ``"kl_div"`` or ``"m3_kd_loss"``.
        in_batch_negatives: use other groups' passages as negatives.

    Example:
        >>> q = F.normalize(torch.randn(2, 8), dim=-1); p = F.normalize(torch.randn(4, 8), dim=-1)
        >>> float(embedder_loss(q, p, temperature=0.05)) > 0
        True
    """
    if p.shape[0] % q.shape[0]:
        raise ConfigError(f"{p.shape[0]} passages are not a whole number of groups for {q.shape[0]} queries")
    group_size = p.shape[0] // q.shape[0]
    return scores_loss(
        similarity(q, p, temperature),
        group_size,
        teacher_scores=teacher_scores,
        kd_loss_type=kd_loss_type,
        in_batch_negatives=in_batch_negatives,
    )


# ------------------------------------------------------------------------------------ BGE-M3 unified
def sparse_vectors(
    token_weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int, unused_ids: torch.Tensor
) -> torch.Tensor:
    """BGE-M3 lexical vectors: ``v[b, t] = max over positions i with input_ids[b, i] = t of w[b, i]``.

    ``token_weights`` (B, L) are the ReLU outputs of the sparse head (0 on padding); ids in
    ``unused_ids`` (CLS, EOS, PAD, UNK) get 0. Returns (B, vocab_size), differentiable.

    Example:
        >>> sparse_vectors(torch.tensor([[0.5, 2.0, 1.0]]), torch.tensor([[1, 2, 1]]), 4, torch.tensor([0])).tolist()
        [[0.0, 1.0, 2.0, 0.0]]
    """
    out = torch.zeros(
        token_weights.shape[0], vocab_size, dtype=token_weights.dtype, device=token_weights.device
    )
    out = out.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)
    keep = torch.ones(vocab_size, dtype=out.dtype, device=out.device)
    keep[unused_ids.to(out.device)] = 0
    return out * keep


def colbert_scores(q_vecs: torch.Tensor, p_vecs: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """ColBERT late interaction: ``s(q, p) = 1/|q| * sum_i max_j q_i . p_j`` over q's real tokens.

    ``q_vecs`` (B, Lq, d) and ``p_vecs`` (N, Lp, d) are per-token vectors with padded positions zeroed
    (BGE-M3 drops the CLS position); ``q_mask`` (B, Lq) marks the real query tokens. Returns (B, N).

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]); p = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
        >>> colbert_scores(q, p, torch.ones(1, 2)).tolist()
        [[0.5, 0.7000000476837158]]
    """
    token = torch.einsum("qin,pjn->qipj", q_vecs, p_vecs)
    best = token.max(dim=-1).values.sum(dim=1)
    return best / q_mask.sum(dim=-1, keepdim=True).clamp(min=1)


def m3_unified_loss(
    dense: torch.Tensor,
    sparse: torch.Tensor,
    colbert: torch.Tensor,
    group_size: int,
    *,
    teacher_scores: torch.Tensor | None = None,
    kd_loss_type: KdLossType = "m3_kd_loss",
    in_batch_negatives: bool = True,
    self_distill: bool = False,
) -> torch.Tensor:
    """BGE-M3's unified fine-tuning loss from the three (B, B*G) score matrices (divided by ``tau``).

    With ``e = dense + 0.3 * sparse + colbert`` and ``L(.)`` the :func:`scores_loss` of a score matrix:

    ``L_u = (L(dense) + L(e) + 0.1 * L(sparse) + L(colbert)) / 4``; with ``self_distill``, the ensemble
    teaches the three (``t = softmax(e)``, detached, over the same columns):
    ``L = (L_u + (KD(dense) + 0.1 * KD(sparse) + KD(colbert)) / 3) / 2`` with ``KD(s) = -mean_i sum_j
    t_ij log softmax_j(s_ij)``, as FlagEmbedding's M3 trainer.

    Example:
        >>> s = torch.randn(2, 4)
        >>> float(m3_unified_loss(s, s, s, 2)) > 0
        True
    """
    kwargs: dict[str, object] = dict(
        teacher_scores=teacher_scores, kd_loss_type=kd_loss_type, in_batch_negatives=in_batch_negatives
    )
    ensemble = dense + 0.3 * sparse + colbert
    parts = [scores_loss(s, group_size, **kwargs) for s in (dense, ensemble, sparse, colbert)]  # type: ignore[arg-type]
    loss = (parts[0] + parts[1] + 0.1 * parts[2] + parts[3]) / 4
    if not self_distill:
        return loss
    if in_batch_negatives:
        views = (ensemble, dense, sparse, colbert)
    else:
        views = tuple(own_group_scores(s, group_size) for s in (ensemble, dense, sparse, colbert))  # type: ignore[assignment]
    targets = torch.softmax(views[0].detach(), dim=-1)
    distill = (
        kl_div_loss(views[1], targets) + 0.1 * kl_div_loss(views[2], targets) + kl_div_loss(views[3], targets)
    ) / 3
    return (loss + distill) / 2


class _GatherKeepLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows, ctx.world = rank, tensor.shape[0], world
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world


def gather_keep_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``all_gather`` along dim 0 that keeps the gradient of this process's own shard.

    Every process then computes the same loss ``L`` over the global batch. The backward pass returns
    ``W * dL/d(local shard)``: data-parallel training averages gradients over the ``W`` processes, so the
    update equals ``dL/dtheta`` of one process computing the whole global batch (FlagEmbedding keeps the
    local gradient unscaled, which shrinks the update by ``W``). Shards must have equal sizes (train
    with ``dataloader_drop_last``). Without an initialised process group it returns ``tensor``.

    Example:
        >>> gather_keep_local_grad(torch.ones(2, 3)).shape   # single process: unchanged
        torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    out: torch.Tensor = _GatherKeepLocalGrad.apply(tensor)
    return out


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``all_gather`` along dim 0 for tensors without gradients (teacher scores)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def matryoshka_embeddings(
    q: torch.Tensor, p: torch.Tensor, dims: Sequence[int], *, normalize: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (query, passage) embeddings truncated to each Matryoshka dimension (normalised after cutting).

    Example:
        >>> [a.shape[1] for a, _ in matryoshka_embeddings(torch.randn(2, 8), torch.randn(4, 8), [4, 8], normalize=True)]
        [4, 8]
    """
    out = []
    for dim in dims:
        if dim <= 0 or dim > q.shape[1]:
            raise ConfigError(
                f"mrl_dims contains {dim}; each must be between 1 and the model dimension {q.shape[1]}"
            )
        qd, pd = q[:, :dim], p[:, :dim]
        if normalize:
            qd, pd = F.normalize(qd, dim=-1), F.normalize(pd, dim=-1)
        out.append((qd, pd))
    return out


def matryoshka_loss(
    q: torch.Tensor,
    p: torch.Tensor,
    dims: Sequence[int],
    *,
    normalize: bool = True,
    **loss_kwargs: object,
) -> torch.Tensor:
    """Matryoshka representation learning: the mean of :func:`embedder_loss` over truncated dimensions.

    ``L = 1/|D| * sum_{d in D} L(norm(q[:, :d]), norm(p[:, :d]))`` (FlagEmbedding's ``use_mrl``).

    Example:
        >>> float(matryoshka_loss(torch.randn(2, 8), torch.randn(4, 8), [4, 8], temperature=0.05)) > 0
        True
    """
    if not dims:
        raise ConfigError("mrl_dims is empty; give the dimensions to train, e.g. --mrl_dims 64 128 384")
    pairs = matryoshka_embeddings(q, p, dims, normalize=normalize)
    total = sum((embedder_loss(qd, pd, **loss_kwargs) for qd, pd in pairs), q.new_zeros(()))  # type: ignore[arg-type]
    return total / len(pairs)
