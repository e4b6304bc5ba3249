"""BGE-M3 outputs and scores: lexical weights (dicts or CSR), lexical matching and ColBERT scores.

The encoder side (one pass through the backbone, three heads) lives in ``Embedder`` and ``heads``; this
module turns its per-text outputs into FlagEmbedding's formats and scores them, vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bgekit.errors import InputError

RawLexical = tuple[np.ndarray, np.ndarray]
"""One text's lexical weights as (sorted token ids, weights)."""

SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


def lexical_dicts(raw: Sequence[RawLexical]) -> list[dict[str, float]]:
    """FlagEmbedding's format: one ``{str(token_id): weight}`` dict per text.

    Example:
        >>> lexical_dicts([(np.array([5, 9]), np.array([0.5, 0.25], np.float32))])
        [{'5': 0.5, '9': 0.25}]
    """
    return [dict(zip(map(str, ids.tolist()), weights.tolist(), strict=True)) for ids, weights in raw]


def lexical_csr(raw: Sequence[RawLexical], vocab_size: int) -> sp.csr_matrix:
    """All texts' lexical weights as one float32 CSR matrix of shape (texts, vocab_size).

    Example:
        >>> lexical_csr([(np.array([1]), np.array([2.0], np.float32))], 4).toarray()
        array([[0., 2., 0., 0.]], dtype=float32)
    """
    counts = [len(ids) for ids, _ in raw]
    indptr = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([ids for ids, _ in raw]).astype(np.int64) if raw else np.zeros(0, np.int64)
    data = np.concatenate([w for _, w in raw]).astype(np.float32) if raw else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(raw), vocab_size))


def _dicts_to_csr(
    left: Sequence[Mapping[Any, float]], right: Sequence[Mapping[Any, float]]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    # keys may be token ids or tokens (after convert_id_to_token): give every distinct key a column
    columns: dict[Any, int] = {}
    matrices = []
    for side in (left, right):
        indptr, indices, data = [0], [], []
        for weights in side:
            for key, value in weights.items():
                indices.append(columns.setdefault(key, len(columns)))
                data.append(float(value))
            indptr.append(len(indices))
        matrices.append((data, indices, indptr, len(side)))
    width = max(1, len(columns))
    left_m, right_m = (
        sp.csr_matrix(
            (np.asarray(d, np.float64), np.asarray(i, np.int64), np.asarray(p, np.int64)), shape=(n, width)
        )
        for d, i, p, n in matrices
    )
    return left_m, right_m


def lexical_matching_score(weights_1: Any, weights_2: Any) -> float | np.ndarray:
    """Sum over shared tokens of the product of their weights (FlagEmbedding's lexical matching score).

    Args:
        weights_1 / weights_2: two dicts (one score), two lists of dicts (a len1 x len2 matrix), or two
            CSR matrices from ``return_sparse=True, sparse_format="csr"`` (a dense len1 x len2 matrix).

    Example:
        >>> lexical_matching_score({"5": 0.5, "7": 1.0}, {"5": 0.4})
        0.2
    """
    if isinstance(weights_1, Mapping) and isinstance(weights_2, Mapping):
        small, large = (weights_1, weights_2) if len(weights_1) <= len(weights_2) else (weights_2, weights_1)
        return float(sum(value * large[key] for key, value in small.items() if key in large))
    if sp.issparse(weights_1) and sp.issparse(weights_2):
        if weights_1.shape[1] != weights_2.shape[1]:
            raise InputError(
                f"lexical weight matrices have {weights_1.shape[1]} and {weights_2.shape[1]} columns; "
                "they must come from the same tokenizer"
            )
        return np.asarray((sp.csr_matrix(weights_1) @ sp.csr_matrix(weights_2).T).todense())
    if _is_dict_list(weights_1) and _is_dict_list(weights_2):
        left, right = _dicts_to_csr(weights_1, weights_2)
        return np.asarray((left @ right.T).todense())
    raise InputError(
        "compute_lexical_matching_score takes two dicts, two lists of dicts or two CSR matrices; got "
        f"{type(weights_1).__name__} and {type(weights_2).__name__}"
    )


def _is_dict_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().float()
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
    else:
        raise InputError(
            f"{what} must be an array of ColBERT vectors (tokens x dim), got {type(value).__name__}"
        )
    if tensor.ndim != 2:
        raise InputError(f"{what} must be 2-dimensional (tokens x dim), got shape {tuple(tensor.shape)}")
    return tensor


def colbert_score(q_reps: Any, p_reps: Any) -> float:
    """ColBERT late interaction: each query vector's best match among the passage's, averaged.

    Example:
        >>> q = np.eye(2, dtype=np.float32); p = np.array([[1.0, 0.0]], np.float32)
        >>> colbert_score(q, p)
        0.5
    """
    q, p = _as_tensor(q_reps, "q_reps"), _as_tensor(p_reps, "p_reps")
    if q.shape[1] != p.shape[1]:
        raise InputError(f"q_reps has dimension {q.shape[1]} but p_reps has {p.shape[1]}")
    if q.shape[0] == 0 or p.shape[0] == 0:
        return 0.0
    return float((q @ p.T).max(dim=1).values.sum() / q.shape[0])


def _padded(vectors: Sequence[np.ndarray], index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [vectors[i].shape[0] for i in index]
    width, dim = max(lengths + [1]), vectors[index[0]].shape[1]
    out = np.zeros((len(index), width, dim), dtype=np.float32)
    mask = np.zeros((len(index), width), dtype=bool)
    for row, (i, n) in enumerate(zip(index, lengths, strict=True)):
        out[row, :n] = vectors[i]
        mask[row, :n] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def paired_colbert_scores(
    q_vecs: Sequence[np.ndarray],
    p_vecs: Sequence[np.ndarray],
    q_index: np.ndarray,
    p_index: np.ndarray,
    chunk: int = 512,
) -> np.ndarray:
    """``colbert_score(q_vecs[q_index[k]], p_vecs[p_index[k]])`` for every k, in padded batches.

    Pairs are grouped by passage length so padding stays small; padded passage tokens never win the max.
    """
    scores = np.zeros(len(q_index), dtype=np.float32)
    order = np.argsort([p_vecs[i].shape[0] for i in p_index], kind="stable")
    for begin in range(0, len(order), chunk):
        rows = order[begin : begin + chunk]
        q, q_mask = _padded(q_vecs, q_index[rows])
        p, p_mask = _padded(p_vecs, p_index[rows])
        token_scores = torch.einsum("bqd,bpd->bqp", q, p)
        token_scores.masked_fill_(~p_mask[:, None, :], float("-inf"))
        best = token_scores.max(dim=2).values.masked_fill(~q_mask, 0.0)
        q_len = q_mask.sum(dim=1).clamp(min=1)
        empty = ~p_mask.any(dim=1)
        best[empty] = 0.0
        scores[rows] = (best.sum(dim=1) / q_len).numpy()
    return scores


def combine_scores(
    dense: np.ndarray, sparse: np.ndarray, colbert: np.ndarray, weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """The five M3 scores of FlagEmbedding's ``compute_score``, from the three per-pair scores."""
    w_dense, w_sparse, w_colbert = (float(w) for w in weights)
    return {
        "colbert": colbert,
        "sparse": sparse,
        "dense": dense,
        "sparse+dense": (sparse * w_sparse + dense * w_dense) / (w_sparse + w_dense),
        "colbert+sparse+dense": (colbert * w_colbert + sparse * w_sparse + dense * w_dense)
        / (w_dense + w_sparse + w_colbert),
    }


def validate_mode_weights(weights: Any) -> list[float]:
    """``weights_for_different_modes``: three numbers [dense, sparse, colbert] (default 1, 1, 1)."""
    if weights is None:
        return [1.0, 1.0, 1.0]
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence | np.ndarray):
        raise InputError(
            f"weights_for_different_modes must be three numbers [dense, sparse, colbert], got {weights!r}"
        )
    values = list(weights)
    if len(values) != 3:
        raise InputError(
            f"weights_for_different_modes must have 3 values [dense, sparse, colbert], got {len(values)}: "
            f"{values!r}"
        )
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InputError(f"weights_for_different_modes must be numbers, got {values!r}") from exc
    if not all(np.isfinite(out)):
        raise InputError(f"weights_for_different_modes must be finite, got {values!r}")
    if out[0] + out[1] == 0 or sum(out) == 0:
        raise InputError(
            f"weights_for_different_modes={values!r}: the dense+sparse and the total weights must not sum "
            "to zero (they divide the combined scores)"
        )
    return out
