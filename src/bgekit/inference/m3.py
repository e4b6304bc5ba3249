"""BGE-M3 outputs and scores: lexical weights (dicts or CSR), lexical matching and ColBERT scores, and
the scoring of (query, passage) pairs behind ``Embedder.compute_score``.

The encoder side (one pass through the backbone, three heads) lives in ``Embedder`` and ``heads``; this
module turns its per-text outputs into FlagEmbedding's formats and scores them, vectorised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bgekit.errors import ConfigError, InputError
from bgekit.inference.heads import COLBERT_FILE, SPARSE_FILE

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


def as_pairs(sentence_pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """Validate (query, passage) pairs; return them and whether a single pair was given."""
    if (
        isinstance(sentence_pairs, tuple | list)
        and len(sentence_pairs) == 2
        and all(isinstance(t, str) for t in sentence_pairs)
    ):
        return [(sentence_pairs[0], sentence_pairs[1])], True
    if isinstance(sentence_pairs, str) or not isinstance(sentence_pairs, Sequence):
        raise InputError(
            f"sentence_pairs must be a list of (query, passage) pairs, got {type(sentence_pairs).__name__}"
        )
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(sentence_pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise InputError(
                f"sentence_pairs[{i}] is {pair!r:.80}; expected a (query, passage) pair of strings"
            )
        pairs.append((pair[0], pair[1]))
    return pairs, False


def concat_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the M3 outputs of several workers, in order."""
    out: dict[str, Any] = {}
    for key in ("dense_vecs", "lexical_weights", "colbert_vecs"):
        if parts[0][key] is None:
            out[key] = None
        elif key == "dense_vecs":
            out[key] = np.concatenate([part[key] for part in parts], axis=0)
        else:
            out[key] = [item for part in parts for item in part[key]]
    return out


def empty_output(heads: tuple[bool, bool, bool] | None, dim: int) -> Any:
    """What encoding no texts gives: a (0, dim) array, or the M3 dict with empty parts for ``heads``."""
    if heads is None:
        return np.zeros((0, dim), dtype=np.float32)
    return {
        "dense_vecs": np.zeros((0, dim), np.float32) if heads[0] else None,
        "lexical_weights": [] if heads[1] else None,
        "colbert_vecs": [] if heads[2] else None,
    }


def format_output(
    result: dict[str, Any], single: bool, sparse_format: str, as_tensor: bool, vocab_size: int
) -> dict[str, Any]:
    """FlagEmbedding's M3 output dict from the engine's: lexical weights as dicts or CSR, dense vectors
    as a tensor when asked, the first item of each for a single text."""
    dense, lexical, colbert = result["dense_vecs"], result["lexical_weights"], result["colbert_vecs"]
    if lexical is not None and sparse_format == "dict":
        lexical = lexical_dicts(lexical)
    elif lexical is not None and sparse_format == "csr":
        lexical = lexical_csr(lexical, vocab_size)
    if dense is not None and as_tensor:
        dense = torch.from_numpy(dense)
    if single:
        dense = None if dense is None else dense[0]
        colbert = None if colbert is None else colbert[0]
        if lexical is not None and sparse_format != "csr":
            lexical = lexical[0]
    return {"dense_vecs": dense, "lexical_weights": lexical, "colbert_vecs": colbert}


def score_pairs(
    encode: Any,
    vocab_size: int,
    sentence_pairs: Any,
    *,
    query_max_length: int,
    passage_max_length: int,
    batch_size: int | None,
    weights_for_different_modes: Sequence[float] | None,
    show_progress: bool | None,
) -> dict[str, Any]:
    """Dense, sparse, ColBERT and mixed scores of (query, passage) pairs (see ``Embedder.compute_score``).

    ``encode(texts, max_length, **flags)`` runs all three heads on plain texts (raw lexical weights).
    Each distinct text is encoded once, then every pair is scored on its own.
    """
    weights = validate_mode_weights(weights_for_different_modes)
    pairs, single = as_pairs(sentence_pairs)
    if not pairs:
        return {key: [] for key in SCORE_KEYS}
    query_ids: dict[str, int] = {}
    passage_ids: dict[str, int] = {}
    q_index = np.fromiter((query_ids.setdefault(q, len(query_ids)) for q, _ in pairs), np.int64, len(pairs))
    p_index = np.fromiter(
        (passage_ids.setdefault(p, len(passage_ids)) for _, p in pairs), np.int64, len(pairs)
    )
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        show_progress=show_progress,
        return_dense=True,
        return_sparse=True,
        return_colbert_vecs=True,
        sparse_format="raw",
    )
    q_out = encode(list(query_ids), query_max_length, **common)
    p_out = encode(list(passage_ids), passage_max_length, **common)
    dense = np.einsum("ij,ij->i", q_out["dense_vecs"][q_index], p_out["dense_vecs"][p_index])
    q_sparse = lexical_csr(q_out["lexical_weights"], vocab_size)[q_index]
    p_sparse = lexical_csr(p_out["lexical_weights"], vocab_size)[p_index]
    sparse = np.asarray(q_sparse.multiply(p_sparse).sum(axis=1), dtype=np.float32).ravel()
    colbert = paired_colbert_scores(q_out["colbert_vecs"], p_out["colbert_vecs"], q_index, p_index)
    scores = combine_scores(dense.astype(np.float32), sparse, colbert, weights)
    if single:
        return {key: float(scores[key][0]) for key in SCORE_KEYS}
    return {key: scores[key].astype(float).tolist() for key in SCORE_KEYS}


def convert_id_to_token(tokenizer: Any, lexical_weights: Any) -> Any:
    """Replace token ids by the token text (``tokenizer.decode([id])``, as FlagEmbedding); a dict gives a
    dict and a list gives a list (FlagEmbedding returns a dict for a one-item list)."""
    cache: dict[Any, str] = {}

    def convert(weights: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in weights.items():
            if key not in cache:
                try:
                    cache[key] = tokenizer.decode([int(key)])
                except (TypeError, ValueError) as exc:
                    raise InputError(f"lexical weight key {key!r} is not a token id") from exc
            out[cache[key]] = value
        return out

    if isinstance(lexical_weights, dict):
        return convert(lexical_weights)
    if isinstance(lexical_weights, list | tuple) and all(isinstance(w, dict) for w in lexical_weights):
        return [convert(w) for w in lexical_weights]
    raise InputError(
        f"convert_id_to_token takes a dict or a list of dicts, got {type(lexical_weights).__name__}"
    )


def unused_token_ids(tokenizer: Any) -> torch.Tensor:
    """The special tokens FlagEmbedding leaves out of lexical weights (CLS, EOS, PAD, UNK)."""
    ids = (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    return torch.tensor(sorted({int(i) for i in ids if i is not None}), dtype=torch.long)


def require_m3(heads: Any, kind: str, what: str) -> Any:
    """``heads`` (the model's M3Heads), or ConfigError saying ``what`` needs a BGE-M3 checkpoint."""
    if heads is None:
        raise ConfigError(
            f"{what} needs a BGE-M3 checkpoint ({SPARSE_FILE} and {COLBERT_FILE} beside the weights); "
            f"this model's kind is {kind!r}"
        )
    return heads


class M3Methods:
    """BGE-M3's methods of ``Embedder`` under FlagEmbedding's ``BGEM3FlagModel`` names: pair scores,
    lexical matching, ColBERT scores and token names, and the check of the ``return_*`` head flags.

    A mixin: the embedder provides the tokenizer, config, settings, M3 heads, ``token_limit``,
    ``_prepare_call`` and ``_encode_validated``.
    """

    m3_heads: Any
    tokenizer: Any
    config: Any
    settings: Any
    _encode_validated: Callable[..., Any]
    _prepare_call: Callable[..., Any]
    token_limit: Callable[..., int]

    @property
    def colbert_dim(self) -> int:
        """The size of M3's ColBERT vectors (after ``colbert_dim`` truncation); 0 for other kinds."""
        if self.m3_heads is None:
            return 0
        return int(self.settings.colbert_dim or self.m3_heads.colbert_size)

    @property
    def vocab_size(self) -> int:
        """Columns of the CSR lexical-weight matrix: every id the tokenizer or the embeddings know."""
        return max(len(self.tokenizer), int(getattr(self.config, "vocab_size", 0) or 0))

    def _check_heads(
        self, return_dense: bool, return_sparse: bool, return_colbert_vecs: bool
    ) -> tuple[bool, bool, bool] | None:
        """Validate the ``return_*`` flags; ``None`` means the plain dense path."""
        if self.m3_heads is None:
            if return_sparse or return_colbert_vecs or not return_dense:
                raise ConfigError(
                    "return_sparse / return_colbert_vecs / return_dense=False need a BGE-M3 checkpoint "
                    f"({SPARSE_FILE} and {COLBERT_FILE} beside the weights); this model's kind is "
                    f"{self.settings.kind!r}"
                )
            return None
        if not (return_dense or return_sparse or return_colbert_vecs):
            raise InputError(
                "return_dense, return_sparse and return_colbert_vecs are all False: ask for at least one"
            )
        return bool(return_dense), bool(return_sparse), bool(return_colbert_vecs)

    def compute_score(
        self,
        sentence_pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        batch_size: int | None = None,
        max_query_length: int | None = None,
        max_passage_length: int | None = None,
        weights_for_different_modes: Sequence[float] | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, Any]:
        """BGE-M3 relevance of each (query, passage) pair: dense, sparse, ColBERT and weighted mixes.

        Each distinct text is encoded once (all three heads in one pass), then every pair is scored on
        its own: no B x B matrix per batch as FlagEmbedding computes and then keeps the diagonal of.
        Texts are used as given (no instruction), truncated to ``max_query_length`` and
        ``max_passage_length`` (the model's query/passage limits by default), as in FlagEmbedding.

        Args:
            sentence_pairs: a list of (query, passage) pairs, or one pair.
            weights_for_different_modes: [w_dense, w_sparse, w_colbert], default [1, 1, 1].

        Returns:
            ``{"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}`` -> a list of floats
            (one float each for a single pair). ``sparse+dense`` is
            ``(w_sparse * sparse + w_dense * dense) / (w_sparse + w_dense)``; the last mixes all three.

        Example:
            >>> m3.compute_score([("what is bge?", "BGE is an embedding model.")])["dense"]   # doctest: +SKIP
            [0.71]
        """
        require_m3(self.m3_heads, self.settings.kind, "compute_score")

        def encode(texts: list[str], max_length: int, **flags: Any) -> Any:
            texts, options = self._prepare_call(texts, "text", {**flags, "max_length": max_length})
            return self._encode_validated(texts, False, options)

        return score_pairs(
            encode,
            self.vocab_size,
            sentence_pairs,
            query_max_length=self.token_limit("query", max_query_length),
            passage_max_length=self.token_limit("passage", max_passage_length),
            batch_size=batch_size,
            weights_for_different_modes=weights_for_different_modes,
            show_progress=show_progress,
        )

    def compute_lexical_matching_score(self, lexical_weights_1: Any, lexical_weights_2: Any) -> Any:
        """Sum of weight products over shared tokens: dicts -> float, lists -> matrix, CSR -> matrix.

        Example:
            >>> m3.compute_lexical_matching_score({"5": 0.5}, {"5": 0.4})   # doctest: +SKIP
            0.2
        """
        return lexical_matching_score(lexical_weights_1, lexical_weights_2)

    def colbert_score(self, q_reps: Any, p_reps: Any) -> float:
        """ColBERT score of one query's vectors against one passage's (``colbert_vecs`` items).

        Example:
            >>> m3.colbert_score(q["colbert_vecs"][0], p["colbert_vecs"][0])   # doctest: +SKIP
        """
        return colbert_score(q_reps, p_reps)

    def convert_id_to_token(self, lexical_weights: Any) -> Any:
        """Replace token ids by the token text (``tokenizer.decode([id])``, as FlagEmbedding).

        A dict gives a dict and a list gives a list (FlagEmbedding returns a dict for a one-item list).

        Example:
            >>> m3.convert_id_to_token({"6": 0.3})   # doctest: +SKIP
            {',': 0.3}
        """
        return convert_id_to_token(self.tokenizer, lexical_weights)
