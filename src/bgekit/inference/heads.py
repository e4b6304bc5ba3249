"""Heads that turn a backbone's hidden states into outputs: pooling, Matryoshka truncation, normalisation.

M3's sparse (lexical) and multi-vector (ColBERT) heads live here too; a model is a backbone plus heads.
``run_encode_step`` is the embedder's step for the batching engine: pad a batch, run the backbone, apply
the heads (inference and training-time evaluation both run it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bgekit.engine import BatchEngine, pad_sequences


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


# ------------------------------------------------------------------------------------------- M3 heads
COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"


class M3Heads(torch.nn.Module):
    """BGE-M3's two extra heads on the backbone's last hidden states.

    ``sparse_linear`` (hidden -> 1, then ReLU) gives each position a lexical weight; ``colbert_linear``
    (hidden -> colbert dim) gives each position a multi-vector (ColBERT) embedding. Both are read from the
    files FlagEmbedding writes beside the weights, ``sparse_linear.pt`` and ``colbert_linear.pt``.

    Example:
        >>> heads = M3Heads(hidden_size=8, colbert_size=8)
        >>> heads.sparse_linear.out_features, heads.colbert_linear.out_features
        (1, 8)
    """

    def __init__(self, hidden_size: int, colbert_size: int) -> None:
        super().__init__()
        self.sparse_linear = torch.nn.Linear(hidden_size, 1)
        self.colbert_linear = torch.nn.Linear(hidden_size, colbert_size)

    @classmethod
    def from_folder(cls, folder: str, hidden_size: int, *, colbert_dim: int | None = None) -> M3Heads:
        """Load both head files from ``folder`` (float32, CPU); errors name the file at fault, and a
        ``colbert_dim`` larger than the ColBERT head is a ConfigError."""
        import os

        from bgekit.errors import ConfigError, ModelLoadError

        states = {}
        for name in (SPARSE_FILE, COLBERT_FILE):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ModelLoadError(
                    f"{path} is missing: a BGE-M3 checkpoint needs both {SPARSE_FILE} and {COLBERT_FILE} "
                    "beside its weights"
                )
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises several types for corrupt or foreign pickles
                raise ModelLoadError(f"could not read {path}: {type(exc).__name__}: {exc}") from exc
            weight = state.get("weight") if isinstance(state, dict) else None
            if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or "bias" not in state:
                raise ModelLoadError(f"{path}: expected a Linear state dict with 'weight' and 'bias'")
            if weight.shape[1] != hidden_size:
                raise ModelLoadError(
                    f"{path}: weight takes inputs of size {weight.shape[1]}, but the backbone's hidden size "
                    f"is {hidden_size}"
                )
            if name == SPARSE_FILE and weight.shape[0] != 1:
                raise ModelLoadError(f"{path}: expected 1 output (a weight per token), got {weight.shape[0]}")
            states[name] = state
        heads = cls(hidden_size, int(states[COLBERT_FILE]["weight"].shape[0]))
        heads.sparse_linear.load_state_dict(states[SPARSE_FILE])
        heads.colbert_linear.load_state_dict(states[COLBERT_FILE])
        if colbert_dim is not None and colbert_dim > heads.colbert_size:
            raise ConfigError(
                f"colbert_dim={colbert_dim} exceeds the ColBERT head's size "
                f"{heads.colbert_size} ({os.path.join(folder, COLBERT_FILE)})"
            )
        return heads.float().eval()

    @property
    def colbert_size(self) -> int:
        return int(self.colbert_linear.out_features)

    def save(self, folder: str) -> None:
        """Write ``sparse_linear.pt`` and ``colbert_linear.pt`` into ``folder`` (atomically)."""
        import os

        from bgekit.io import atomic_path

        for name, module in ((SPARSE_FILE, self.sparse_linear), (COLBERT_FILE, self.colbert_linear)):
            with atomic_path(os.path.join(folder, name)) as tmp:
                torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)


def lexical_weights(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sparse_linear: torch.nn.Linear,
    unused_ids: torch.Tensor,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per input: the token ids present and their weight, the largest ReLU weight over their positions.

    Ids in ``unused_ids`` (FlagEmbedding drops CLS, EOS, PAD and UNK) and weights <= 0 are left out, as in
    FlagEmbedding's ``BGEM3FlagModel`` (a NaN weight is kept, for the engine to refuse). Ids come back
    sorted, as int64, weights as float32.
    """
    weights = torch.relu(sparse_linear(hidden.float())).squeeze(-1)
    # ~(w <= 0) rather than w > 0: a NaN weight is kept, so the batching engine refuses it instead of
    # the token silently vanishing from the sparse vector
    keep = attention_mask.bool() & ~(weights <= 0) & ~torch.isin(input_ids, unused_ids.to(input_ids.device))
    rows, cols = keep.nonzero(as_tuple=True)
    ids = input_ids[rows, cols].long()
    values = weights[rows, cols]
    span = int(input_ids.max().item()) + 1 if input_ids.numel() else 1
    keys, inverse = torch.unique(rows.long() * span + ids, return_inverse=True)
    best = torch.zeros(keys.shape[0], dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, inverse, values, reduce="amax", include_self=False)
    counts = torch.bincount(keys // span, minlength=input_ids.shape[0]).tolist()
    out_ids = (keys % span).cpu().numpy()
    out_weights = best.cpu().numpy().astype(np.float32, copy=False)
    bounds = np.cumsum([0, *counts])
    return [(out_ids[a:b], out_weights[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def colbert_vectors(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    colbert_linear: torch.nn.Linear,
    *,
    dim: int | None,
    normalize: bool,
) -> list[np.ndarray]:
    """Per input: one vector per real token after the first (CLS), as FlagEmbedding's ``colbert_vecs``.

    Only real positions go through the head (padding is skipped, either side); ``dim`` keeps the first
    dimensions before normalising. Returns float32 arrays of shape (tokens - 1, dim).
    """
    mask = attention_mask.bool()
    first = mask.int().argmax(dim=1)  # first real position per row, for left or right padding
    mask = mask.clone()
    mask[torch.arange(mask.shape[0], device=mask.device), first] = False
    vectors = colbert_linear(hidden[mask].float())
    if dim is not None:
        vectors = vectors[:, :dim]
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=-1)
    counts = mask.sum(dim=1).tolist()
    return [part.numpy() for part in torch.split(vectors.cpu(), counts)]


@dataclass(frozen=True)
class DenseOptions:
    """How an embedder turns hidden states into its outputs: pooling, Matryoshka truncation, L2
    normalisation of dense vectors, and the ColBERT vectors' size and normalisation."""

    pooling: str
    truncate_dim: int | None
    normalize: bool
    colbert_dim: int | None = None
    colbert_normalize: bool = True


def embed_batch(
    model: Any,
    batch: dict[str, torch.Tensor],
    heads: tuple[bool, bool, bool] | None,
    options: DenseOptions,
    m3_heads: M3Heads | None = None,
    unused_ids: torch.Tensor | None = None,
) -> Any:
    """One padded batch through the backbone and the heads: a (batch, dim) CPU tensor of dense vectors,
    or for ``heads`` (BGE-M3's dense, sparse, ColBERT flags) a dict with ``dense``/``sparse``/``colbert``."""
    mask = batch["attention_mask"]
    with torch.inference_mode():
        hidden = model(**batch, return_dict=True).last_hidden_state
        if heads is None:
            pooled = pool(hidden, mask, options.pooling)
            return finish_dense(pooled, truncate_dim=options.truncate_dim, normalize=options.normalize).cpu()
        assert m3_heads is not None and unused_ids is not None
        out: dict[str, Any] = {}
        if heads[0]:
            pooled = pool(hidden, mask, options.pooling)
            out["dense"] = finish_dense(
                pooled, truncate_dim=options.truncate_dim, normalize=options.normalize
            ).cpu()
        if heads[1]:
            out["sparse"] = lexical_weights(
                hidden, batch["input_ids"], mask, m3_heads.sparse_linear, unused_ids
            )
        if heads[2]:
            out["colbert"] = colbert_vectors(
                hidden,
                mask,
                m3_heads.colbert_linear,
                dim=options.colbert_dim,
                normalize=options.colbert_normalize,
            )
        return out


def forward_arguments(model: Any) -> set[str] | None:
    """Names the model's ``forward`` takes (so a decoder never gets ``token_type_ids``), or None for any."""
    import inspect

    try:
        parameters = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None if "token_type_ids" in parameters else set(parameters) | {"attention_mask", "input_ids"}
    return set(parameters)


def run_encode_step(
    engine: BatchEngine,
    model: Any,
    tokenizer: Any,
    features: Sequence[dict[str, list[int]]],
    dense: DenseOptions,
    device: torch.device | str,
    *,
    heads: tuple[bool, bool, bool] | None = None,
    m3_heads: M3Heads | None = None,
    unused_ids: torch.Tensor | None = None,
) -> Any:
    """The embedder's encode step run by ``engine`` over tokenized ``features``: each batch padded on the
    tokenizer's side, given the arguments ``model``'s forward takes, and turned into vectors by the heads.

    ``Embedder.encode_features`` and the encoder used for evaluation during training
    (``bgekit.finetune.evaluation``) both run it, so a model in training encodes as it will at inference.
    Returns the engine's outputs in input order (a tensor, or for ``heads`` a dict of per-head outputs).
    """
    pad_id = int(tokenizer.pad_token_id)
    side = tokenizer.padding_side
    accepted = forward_arguments(model)

    def step(indices: list[int]) -> Any:
        batch = pad_sequences([features[i] for i in indices], pad_id, padding_side=side)
        batch = {k: v.to(device) for k, v in batch.items() if accepted is None or k in accepted}
        return embed_batch(model, batch, heads, dense, m3_heads, unused_ids)

    return engine.run([len(f["input_ids"]) for f in features], step)
