"""Approximate dense search for big corpora: which faiss structure an index uses, how it is trained and
filled in chunks, searched with per-call knobs, and how close it comes to exact search (recall@k).

``AnnConfig`` names the structure: ``flat`` (exact, the default), ``ivf`` (an inverted file of ``nlist``
k-means cells, ``nprobe`` of them visited per query) or ``hnsw`` (a graph of ``hnsw_m`` links per vector,
``ef_search`` candidates kept while walking it), each storing vectors as they are (``quantizer=None``), as
8-bit scalars (``"sq8"``, 4x smaller) or, for IVF, product-quantised codes (``"pq"``, ``pq_m`` bytes a
vector). A faiss factory string (``factory="IVF4096,PQ48"``) is accepted for anything else. Every
structure scores by inner product, as the exact path does.

Example:
    >>> import numpy as np
    >>> vectors = np.random.default_rng(0).standard_normal((2000, 32)).astype("float32")
    >>> config = AnnConfig("ivf", nlist=16, nprobe=16)
    >>> index = build_faiss_index(config, vectors)
    >>> recall_at_k(search_faiss(index, config, vectors[:5], 10)[1], exact_top_k(vectors, vectors[:5], 10)[1])
    1.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np

from bgekit.errors import ConfigError
from bgekit.optional import require_faiss

AnnKind = Literal["flat", "ivf", "hnsw"]
Quantizer = Literal["sq8", "pq"]
ANN_KINDS = ("flat", "ivf", "hnsw")
QUANTIZERS = ("sq8", "pq")
SEARCH_KNOBS = ("nprobe", "ef_search", "refine_factor")
"""What may change per search call; the rest is fixed when the structure is built."""

ADD_CHUNK = 65_536
"""Vectors added to a faiss index at a time (a memory-mapped corpus is read chunk by chunk)."""
_EXACT_BLOCK = 262_144
"""Corpus rows scored at once by :func:`exact_top_k` (a 384-dimensional block is 400 MB)."""
_MIN_POINTS_PER_CELL = 39
"""faiss warns below 39 training points per k-means centroid; nlist and the sample size respect it."""


@dataclass(frozen=True)
class AnnConfig:
    """How dense vectors are searched: exactly, or approximately through an IVF or HNSW structure.

    Args:
        kind: ``"flat"`` (exact inner product, the default), ``"ivf"`` or ``"hnsw"``.
        quantizer: ``None`` (vectors stored as float32), ``"sq8"`` (8-bit scalar quantisation) or
            ``"pq"`` (product quantisation, IVF only).
        nlist: IVF cells (default ``4 * sqrt(n)``, at most ``n / 39``, chosen when built).
        nprobe: IVF cells visited per query (search time; more is slower and closer to exact).
        hnsw_m: HNSW links per vector (memory ``~ 8 * hnsw_m`` bytes a vector on top of the codes).
        ef_construction: HNSW candidates kept while building (more is slower to build, a better graph).
        ef_search: HNSW candidates kept while searching (search time; must be >= the hits asked for,
            which search raises it to).
        pq_m: PQ sub-vectors, one byte each (default ``dim / 8``; must divide the dimension).
        train_size: vectors sampled to train IVF/quantisers (default ``max(64 * nlist, 65,536)``,
            capped at the corpus).
        refine_factor: search time: fetch ``refine_factor * k`` candidates and rank them by their exact
            inner products with the raw vectors the index keeps (``1``: the approximate hits, rescored).
        factory: a faiss ``index_factory`` string instead of the fields above (e.g. ``"IVF4096,PQ48"``);
            ``nprobe``/``ef_search`` still apply where the structure has them.
        seed: the training sample's seed.

    Example:
        >>> AnnConfig("hnsw", quantizer="sq8").factory_string(384, 1_000_000)
        'HNSW32_SQ8'
        >>> AnnConfig("ivf", quantizer="pq").factory_string(384, 1_000_000)
        'IVF4000,PQ48np'
    """

    kind: AnnKind = "flat"
    quantizer: Quantizer | None = None
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    pq_m: int | None = None
    train_size: int | None = None
    refine_factor: int = 1
    factory: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factory is not None:
            if not isinstance(self.factory, str) or not self.factory.strip():
                raise ConfigError(
                    f"factory must be a non-empty faiss index_factory string, got {self.factory!r}"
                )
            if self.kind != "flat" or self.quantizer is not None:
                raise ConfigError("give either factory=... or kind/quantizer, not both")
        if self.kind not in ANN_KINDS:
            raise ConfigError(f"ann kind {self.kind!r} is not valid; choose one of {list(ANN_KINDS)}")
        if self.quantizer is not None and self.quantizer not in QUANTIZERS:
            raise ConfigError(
                f"quantizer {self.quantizer!r} is not valid; choose None or one of {list(QUANTIZERS)}"
            )
        if self.kind == "flat" and self.quantizer is not None:
            raise ConfigError(
                f"quantizer={self.quantizer!r} needs an approximate structure: kind='ivf' or 'hnsw'"
            )
        if self.kind == "hnsw" and self.quantizer == "pq":
            raise ConfigError("quantizer='pq' is offered with kind='ivf'; HNSW takes None or 'sq8'")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "refine_factor"):
            _check_positive(name, getattr(self, name))
        for name in ("nlist", "pq_m", "train_size"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))

    @property
    def exact(self) -> bool:
        """True for the exhaustive flat search (no faiss structure is saved for it)."""
        return self.kind == "flat" and self.factory is None

    @classmethod
    def parse(cls, spec: AnnConfig | str | Mapping[str, Any] | None, **overrides: Any) -> AnnConfig:
        """An ``AnnConfig`` from a config, a kind (``"ivf"``), ``"kind-quantizer"`` (``"ivf-pq"``,
        ``"hnsw-sq8"``), a faiss factory string (``"IVF1024,SQ8"``), or a mapping of fields; ``overrides``
        (fields left ``None`` are ignored) are applied on top.

        Example:
            >>> AnnConfig.parse("ivf-sq8", nprobe=8)
            AnnConfig(kind='ivf', quantizer='sq8', nlist=None, nprobe=8, hnsw_m=32, ef_construction=40, ef_search=64, pq_m=None, train_size=None, refine_factor=1, factory=None, seed=0)
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"unknown ann option(s) {unknown}; valid options: {sorted(f.name for f in fields(cls))}"
            )
        if spec is None:
            return cls(**given)
        if isinstance(spec, AnnConfig):
            return replace(spec, **given)
        if isinstance(spec, Mapping):
            bad = sorted(set(spec) - {f.name for f in fields(cls)})
            if bad:
                raise ConfigError(
                    f"unknown ann option(s) {bad}; valid options: {sorted(f.name for f in fields(cls))}"
                )
            return cls(**{**spec, **given})
        if not isinstance(spec, str):
            raise ConfigError(f"ann must be an AnnConfig, a string or a mapping, got {type(spec).__name__}")
        kind, _, quantizer = spec.strip().lower().partition("-")
        if kind in ANN_KINDS and (not quantizer or quantizer in QUANTIZERS):
            return cls(kind=kind, quantizer=quantizer or None, **given)  # type: ignore[arg-type]
        if re.match(r"^[A-Z]", spec.strip()):
            return cls(factory=spec.strip(), **given)
        raise ConfigError(
            f"ann={spec!r} is not valid; choose 'flat', 'ivf', 'hnsw', 'ivf-sq8', 'ivf-pq', 'hnsw-sq8', "
            "or a faiss factory string such as 'IVF4096,PQ48'"
        )

    def resolved(self, dim: int, n: int) -> AnnConfig:
        """The config with the defaults that depend on the corpus filled in (what an index saves)."""
        nlist = self.nlist
        if self.kind == "ivf" and nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(n)), n // _MIN_POINTS_PER_CELL))
        pq_m = self.pq_m
        if self.quantizer == "pq" and pq_m is None:
            pq_m = max(1, dim // 8)
            while dim % pq_m:
                pq_m -= 1
        if self.quantizer == "pq" and pq_m is not None and dim % pq_m:
            raise ConfigError(f"pq_m={pq_m} must divide the vectors' dimension {dim}")
        if nlist is not None and self.kind == "ivf" and nlist > n:
            raise ConfigError(f"nlist={nlist} is more IVF cells than the {n} vectors to index")
        return replace(self, nlist=nlist, pq_m=pq_m)

    def factory_string(self, dim: int, n: int) -> str:
        """The faiss ``index_factory`` description of this structure for ``n`` vectors of ``dim``."""
        if self.factory is not None:
            return self.factory
        config = self.resolved(dim, n)
        if config.kind == "flat":
            return "Flat"
        if config.kind == "hnsw":
            return f"HNSW{config.hnsw_m}" + ("_SQ8" if config.quantizer == "sq8" else "")
        # "np": no polysemous training, which search never uses and which takes minutes on big codebooks
        codes = {None: "Flat", "sq8": "SQ8", "pq": f"PQ{config.pq_m}np"}[config.quantizer]
        return f"IVF{config.nlist},{codes}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def build_faiss_index(
    config: AnnConfig,
    vectors: np.ndarray,
    *,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Train (on a sample) and fill the faiss structure ``config`` describes with ``vectors`` (an array or
    a read-only memory map; added ``ADD_CHUNK`` rows at a time, so a memory map is never read whole).

    Raises:
        ConfigError: a factory string faiss does not understand, or a structure the corpus is too small
            to train.
    """
    faiss = require_faiss("approximate dense search")
    n, dim = vectors.shape
    config = config.resolved(dim, n)
    description = config.factory_string(dim, n)
    try:
        index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(
            f"faiss cannot build {description!r} for {dim}-dimensional vectors: "
            f"{str(exc).strip().splitlines()[-1]}; see faiss's index_factory documentation"
        ) from exc
    hnsw = _hnsw_of(index)
    if hnsw is not None:
        hnsw.efConstruction = config.ef_construction
    if not index.is_trained:
        wanted = config.train_size or max(64 * (config.nlist or 0), 65_536)
        sample = sample_rows(vectors, min(n, wanted), config.seed)
        ivf = _ivf_of(index)
        if ivf is not None and len(sample) < ivf.nlist:
            raise ConfigError(
                f"{ivf.nlist} IVF cells need at least {ivf.nlist} training vectors; the corpus has {n}: "
                "lower nlist"
            )
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise ConfigError(
                f"training {description!r} on {len(sample)} vectors failed: {str(exc).strip().splitlines()[-1]}"
            ) from exc
    for begin in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[begin : begin + ADD_CHUNK], dtype=np.float32))
        if progress is not None:
            progress(min(n, begin + ADD_CHUNK))
    return index


def sample_rows(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct rows in corpus order, chosen at random (sorted reads are kind to a memory map)."""
    n = len(vectors)
    if count >= n:
        return np.ascontiguousarray(vectors[:], dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _ivf_of(index: Any) -> Any:
    faiss = require_faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw_of(index: Any) -> Any:
    faiss = require_faiss()
    for candidate in (index, getattr(faiss, "downcast_index", lambda x: x)(index)):
        hnsw = getattr(candidate, "hnsw", None)
        if hnsw is not None:
            return hnsw
    return None


def search_parameters(
    index: Any, config: AnnConfig, k: int, *, nprobe: int | None = None, ef_search: int | None = None
) -> Any:
    """faiss per-call search parameters for ``index`` (``None`` for a flat one): unset knobs take
    ``config``'s values, and ``ef_search`` is raised to ``k`` (HNSW cannot return more than it keeps)."""
    faiss = require_faiss()
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is not None:
            _check_positive(name, value)
    if _ivf_of(index) is not None:
        return faiss.SearchParametersIVF(nprobe=nprobe or config.nprobe)
    if _hnsw_of(index) is not None:
        return faiss.SearchParametersHNSW(efSearch=max(k, ef_search or config.ef_search))
    return None


def search_faiss(
    index: Any,
    config: AnnConfig,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, positions)`` of the ``k`` best hits per query from a faiss structure (``-1`` pads)."""
    params = search_parameters(index, config, k, nprobe=nprobe, ef_search=ef_search)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if params is None:
        return index.search(queries, k)  # type: ignore[no-any-return]
    return index.search(queries, k, params=params)  # type: ignore[no-any-return]


def rescore(
    vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's ``candidates`` (positions, ``-1`` ignored) by their exact inner
    products with ``vectors``, best first, ties in corpus order; ``-1``/``-inf`` pad rows with fewer.

    Only the candidates' rows are read, in sorted order (a memory map is never read whole)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_p = np.full((len(queries), k), -1, dtype=np.int64)
    wanted = np.unique(candidates[candidates >= 0])
    if not len(wanted):
        return out_s, out_p
    rows = np.asarray(vectors[wanted], dtype=np.float32)
    where = {int(p): i for i, p in enumerate(wanted)}
    for q, row in enumerate(candidates):
        own = np.unique(row[row >= 0])
        scores = rows[[where[int(p)] for p in own]] @ queries[q]
        order = np.lexsort((own, -scores))[:k]
        out_s[q, : len(order)], out_p[q, : len(order)] = scores[order], own[order]
    return out_s, out_p


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(scores, positions)`` of the ``k`` best inner products, best first and ties in corpus
    order, read block by block (a memory-mapped corpus is never loaded whole)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(vectors)
    k = min(k, n)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_p = np.zeros((len(queries), 0), dtype=np.int64)
    for begin in range(0, n, _EXACT_BLOCK):
        block = np.asarray(vectors[begin : begin + _EXACT_BLOCK], dtype=np.float32)
        scores = queries @ block.T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        cand_p = np.concatenate([best_p, part + begin], axis=1)
        order = np.lexsort((cand_p, -cand_s), axis=1)[:, :k]
        best_s, best_p = np.take_along_axis(cand_s, order, axis=1), np.take_along_axis(cand_p, order, axis=1)
    return best_s, best_p


def recall_at_k(approximate: np.ndarray | list[list[int]], exact: np.ndarray | list[list[int]]) -> float:
    """Mean over queries of the share of the exact top-k found in the approximate top-k (k from ``exact``).

    Example:
        >>> recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]])
        0.8333333333333334
    """
    shares = []
    for found, truth in zip(approximate, exact, strict=True):
        wanted = {int(p) for p in truth if int(p) >= 0}
        if wanted:
            shares.append(len(wanted & {int(p) for p in found}) / len(wanted))
    return float(np.mean(shares)) if shares else 1.0


def write_faiss_index(index: Any, path: str) -> None:
    """``faiss.write_index`` to ``path`` (the caller stages the folder, or renames the file into place)."""
    require_faiss().write_index(index, path)


def read_faiss_index(path: str) -> Any:
    return require_faiss().read_index(path)
