"""Static int8 quantisation of an embedder's ONNX graph, calibrated on the user's own texts.

Dynamic int8 (``quantization="int8"``) quantises activations afresh on every call and keeps fp32 code
around each int8 MatMul; static int8 fixes the activation ranges once, from a sample of the texts the model
will encode, and writes them into the graph as QuantizeLinear/DequantizeLinear (QDQ) pairs that ONNX
Runtime fuses into int8 kernels. Weights are per-channel int8; activations are asymmetric uint8 whose
ranges come from a MinMax pass over the calibration texts. MatMuls whose inputs carry outliers too wide
for 256 levels stay in fp32 (``keep_fp32``): by default (``"auto"``) the FFN down-projection of each layer,
whose GELU output spans the widest range, then, only if the result is still below the threshold, the FFN
up-projections and then the query/key/value projections, whose inputs are LayerNorm outputs with BERT's
few outlier dimensions.

``backend="openvino"`` quantises the plain (or packed) export for OpenVINO instead, with NNCF's
post-training quantisation (its transformer preset: SmoothQuant, per-channel int8 weights, bias
correction), calibrated on the same texts and checked the same way, its ladder keeping the last layer
unquantised on every rung (``OPENVINO_LADDER``); the MatMuls it leaves out run in the dtype the model is
loaded with, bf16 on a CPU with bf16 instructions. It is written as an OpenVINO IR that
``Embedder(folder, backend="openvino", quantization="int8-static")`` loads.

The result is checked before it is kept: the calibrated graph encodes held-out texts (never the
calibration ones), its vectors are compared with the fp32 model's, and a graph whose minimum cosine falls
below ``threshold`` is refused with an error that names the figure. A kept graph is written with the
model's files into a new folder (atomically) under the name ``Embedder(folder,
quantization="int8-static")`` loads.

Example:
    >>> report = calibrate_int8("all-MiniLM-L6-v2", texts, "minilm-int8")     # doctest: +SKIP
    >>> report.min_cosine >= 0.995                                            # doctest: +SKIP
    True
    >>> Embedder("minilm-int8", quantization="int8-static").encode(["a text"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from bgekit.errors import ConfigError, InputError
from bgekit.inference.onnx_backend import (
    GRAPH_VERSION,
    Task,
    calibrated_graph_name,
    export_onnx,
    require_onnxruntime,
)
from bgekit.inference.openvino_backend import import_nncf, require_openvino
from bgekit.inference.packing import position_offset, unpacked_inputs
from bgekit.inference.rerank_inputs import Feature, as_pair_list
from bgekit.io import replace_folder

GROUPS = ("ffn-output", "first-ffn-output", "ffn-input", "attention-qkv", "last-layer")
AUTO_LADDER: tuple[tuple[str, ...], ...] = (
    ("ffn-output",),
    ("ffn-output", "ffn-input"),
    ("ffn-output", "ffn-input", "attention-qkv"),
)
"""``keep_fp32="auto"``: the sets of MatMul groups kept in fp32, tried in order, fewest fp32 first."""
OPENVINO_LADDER: tuple[tuple[str, ...], ...] = (
    ("last-layer",),
    ("first-ffn-output", "last-layer"),
    *((*groups, "last-layer") for groups in AUTO_LADDER),
)
"""For ``backend="openvino"``: the last layer unquantised on every rung, and before ``AUTO_LADDER``'s sets
two with more in int8. NNCF's SmoothQuant lets most FFN down-projections run in int8: on all-MiniLM-L6-v2
calibrated on 200 SciFact documents and 200 queries, every MatMul but the last layer's in int8 kept
cosine 0.9946 (documents) and 0.9950 (queries); the first layer's down-projection unquantised as well,
0.9969 and 0.9956, about 9% faster than all six down-projections unquantised. Calibrated as
``benchmarks/encode.py`` does, SciFact nDCG@10 on all 5,183 documents at 512 tokens was 0.6532 (the last
layer only unquantised), 0.6516 (with the first down-projection) and 0.6533 (all down-projections),
against fp32's 0.6541. NNCF's int8 of the last layer's attention output lets a rare short input slip
below the threshold unseen by any held-out sample (one of 809 queries fell to 0.992 where every held-out
text passed), so that layer stays unquantised."""
DEFAULT_THRESHOLD = 0.995
INFERRED_GRAPH = "inferred.onnx"
"""The shape-inferred fp32 graph ONNX Runtime's calibration reads, staged beside the result and removed."""


class CalibrationError(ConfigError):
    """A calibrated graph fell below the quality threshold; nothing was saved."""


@dataclass(frozen=True)
class CalibrationReport:
    """What a calibration produced and how close it stays to fp32 on held-out texts."""

    path: str
    calibration_texts: int
    held_out_texts: int
    min_cosine: float
    mean_cosine: float
    fp32_nodes: tuple[str, ...]
    fp32_groups: tuple[str, ...]
    calibration_queries: int = 0
    held_out_queries: int = 0
    query_min_cosine: float | None = None
    """The minimum over the held-out queries alone (``min_cosine`` covers them and the texts)."""
    tried: tuple[str, ...] = ()
    """One line per rung of the ladder tried, in order, with its figures; the last is the graph kept."""


@dataclass(frozen=True)
class RerankerCalibrationReport:
    """What a cross-encoder's calibration produced and how closely its scores rank held-out pairs as fp32.

    ``min_spearman`` is the lowest Spearman correlation between int8 and fp32 scores over one query's
    held-out pairs (the pairs of queries with fewer than three held-out pairs counted as one group), the
    figure held to the threshold; ``max_score_difference`` is the largest difference of raw scores.
    """

    path: str
    calibration_pairs: int
    held_out_pairs: int
    min_spearman: float
    mean_spearman: float
    max_score_difference: float
    fp32_nodes: tuple[str, ...]
    fp32_groups: tuple[str, ...]
    tried: tuple[str, ...] = ()
    """One line per rung of the ladder tried, in order, with its figures; the last is the graph kept."""


def _as_query(item: Any, index: int) -> str:
    if isinstance(item, str) and item.strip():
        return item
    raise InputError(f"calibration query {index} must be a non-empty string, got {item!r:.80}")


def _as_text(item: Any, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return f"{item.get('title') or ''} {item['text']}".strip()
    raise InputError(
        f"calibration text {index} must be a string or a {{'title', 'text'}} dict, got {item!r:.80}"
    )


class _TextReader:
    """ONNX Runtime's CalibrationDataReader over token features, one unpadded row per call: the graph
    takes no attention mask (bgekit's runner never feeds padding), so calibration sees what inference sees.
    """

    def __init__(self, rows: list[Feature], input_names: list[str]) -> None:
        self.token_rows = rows
        self.input_names = input_names
        self.rows = self._rows()

    def _rows(self) -> Iterator[dict[str, np.ndarray]]:
        for feature in self.token_rows:
            given = _row_inputs(feature)
            # an unfused graph still takes attention_mask: all ones, as the runner feeds it
            yield {name: given[name].numpy() for name in self.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.rows, None)

    def rewind(self) -> None:
        self.rows = self._rows()


def _row_inputs(feature: Feature) -> dict[str, torch.Tensor]:
    """One unpadded row as the runner feeds it: ids, token types (zeros for a single text) and a mask of
    ones."""
    row = torch.tensor([feature["input_ids"]], dtype=torch.long)
    types = feature.get("token_type_ids")
    return {
        "input_ids": row,
        "token_type_ids": torch.zeros_like(row) if types is None else torch.tensor([types], dtype=torch.long),
        "attention_mask": torch.ones_like(row),
    }


def matmul_groups(graph_path: str) -> dict[str, list[str]]:
    """The graph's MatMuls by role: ``ffn-output`` (takes a GELU's output: the FFN down-projection),
    ``first-ffn-output`` (the first layer's), ``ffn-input`` (feeds a GELU), ``attention-qkv``
    (query/key/value projections) and ``last-layer`` (a cross-encoder's pooler and classifier with it: one
    row per pair, cheap, and the score itself)."""
    import onnx

    model = onnx.load(graph_path, load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    gelu = ("Gelu", "BiasGelu", "FastGelu", "Erf")  # Erf: the GELU an unfused export writes out in full
    elementwise = ("Add", "Div", "Mul")

    def feeds_gelu(node: Any, hops: int = 3) -> bool:
        following = [c for out in node.output for c in consumers.get(out, [])]
        return any(
            c.op_type in gelu or (hops > 1 and c.op_type in elementwise and feeds_gelu(c, hops - 1))
            for c in following
        )

    def after_gelu(name: str, hops: int = 4) -> bool:
        source = producers.get(name)
        if source is None:
            return False
        return source.op_type in gelu or (
            hops > 1 and source.op_type in elementwise and any(after_gelu(i, hops - 1) for i in source.input)
        )

    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    layers = sorted({int(m.group(1)) for n in matmuls if (m := re.search(r"layer[._](\d+)[./]", n.name))})
    last = f"layer.{layers[-1]}/" if layers else None
    first = f"layer.{layers[0]}/" if layers else None
    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    for node in matmuls:
        if after_gelu(node.input[0]):
            groups["ffn-output"].append(node.name)
            if first and first in node.name:
                groups["first-ffn-output"].append(node.name)
        if feeds_gelu(node):
            groups["ffn-input"].append(node.name)
        if "/attention/self/" in node.name:
            groups["attention-qkv"].append(node.name)
        if last and last in node.name:
            groups["last-layer"].append(node.name)
    groups["last-layer"] += [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and re.search(r"pooler|classifier", n.name)
    ]
    return groups


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(1), dtype=np.float64)


def _ladder(keep_fp32: str | Sequence[str], backend: str, threshold: float) -> tuple[tuple[str, ...], ...]:
    """The sets of MatMul groups to try unquantised, in order, after checking the shared arguments."""
    if backend not in ("onnx", "openvino"):
        raise ConfigError(f"backend={backend!r} is not valid for calibration; choose 'onnx' or 'openvino'")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold={threshold!r} is not valid; give a value in (0, 1]")
    ladder = (
        (OPENVINO_LADDER if backend == "openvino" else AUTO_LADDER)
        if keep_fp32 == "auto"
        else (tuple([keep_fp32] if isinstance(keep_fp32, str) else keep_fp32),)
    )
    for groups in ladder:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ConfigError(f"keep_fp32 has unknown groups {unknown}; choose from {list(GROUPS)} or 'auto'")
    return ladder


def calibrate_int8(
    model: str,
    texts: Sequence[str | dict[str, str]],
    out: str,
    *,
    held_out: int = 100,
    threshold: float = DEFAULT_THRESHOLD,
    max_length: int | None = None,
    keep_fp32: str | Sequence[str] = "auto",
    backend: str = "onnx",
    queries: Sequence[str] | None = None,
) -> CalibrationReport:
    """Quantise ``model``'s graph to static int8 calibrated on ``texts``; save it with the model.

    The last ``held_out`` texts are kept out of calibration and used only to check the result; the
    others calibrate the activation ranges. Queries, when given, are treated the same way as queries
    (their instruction applied, their token limit): the last ``min(held_out, len(queries) // 2)`` check the
    result as ``encode_queries`` encodes them, the others join the calibration. A graph calibrated on
    passages alone can keep every held-out passage above the threshold and still lose a few queries,
    whose short inputs reach activation ranges long texts do not; a sample of real queries covers them.

    Args:
        model: a local model folder (or a name bgekit resolves to one) that ``Embedder`` loads.
        texts: the user's own texts (strings or ``{"title", "text"}`` dicts), a few hundred are enough.
        out: the folder to write: the model's files plus the calibrated graph (replaced atomically).
        held_out: how many texts (taken from the end) check the result and are not calibrated on.
        threshold: the lowest acceptable cosine between a held-out text's int8 and fp32 vectors.
        max_length: token limit of the calibration and held-out texts; default the model's own passage
            limit, the one ``Embedder(out, quantization="int8-static")`` applies.
        keep_fp32: MatMul groups left unquantised (``ffn-output``, ``first-ffn-output``, ``ffn-input``,
            ``attention-qkv``, ``last-layer``; empty: quantise all), or ``"auto"``: try ``AUTO_LADDER``'s
            sets in order (``OPENVINO_LADDER``'s for OpenVINO) and keep the first that reaches
            ``threshold``.
        backend: ``"onnx"``: a QDQ graph for ONNX Runtime (``quantize_static``), the unquantised MatMuls
            in fp32; ``"openvino"``: an OpenVINO IR quantised by NNCF (``bgekit[openvino]``), whose
            unquantised MatMuls run in the dtype the model is loaded with (bf16 where the CPU has it).
            The result loads with ``Embedder(out, backend=backend, quantization="int8-static")``.
        queries: a sample of the user's own queries (a few hundred; at least 8), checked and calibrated
            on as queries. Queries of another domain do not stand in for them.

    Returns:
        A ``CalibrationReport`` with the minimum and mean cosine to fp32 on the held-out texts (and
        queries).

    Raises:
        CalibrationError: the minimum cosine on held-out texts (or queries) is below ``threshold``
            (nothing written).
        InputError: too few texts or queries, a text that is neither a string nor a title/text dict, or
            an empty query.

    Example:
        >>> calibrate_int8(model_path, corpus_texts, "out/minilm-int8").min_cosine  # doctest: +SKIP
        0.996
    """
    from bgekit import Embedder
    from bgekit.models.loading import resolve_model_folder

    ladder = _ladder(keep_fp32, backend, threshold)
    plain = [_as_text(t, i) for i, t in enumerate(texts)]
    if held_out < 1 or len(plain) < held_out + 16:
        raise InputError(
            f"calibration needs at least held_out + 16 = {held_out + 16} texts (held_out={held_out}), "
            f"got {len(plain)}"
        )
    calibration, check_texts = plain[:-held_out], plain[-held_out:]
    query_texts = [_as_query(q, i) for i, q in enumerate(queries or [])]
    if queries is not None and len(query_texts) < 8:
        raise InputError(f"calibration queries need at least 8 queries, got {len(query_texts)}")
    query_held_out = min(held_out, len(query_texts) // 2)
    query_calibration = query_texts[: len(query_texts) - query_held_out]
    query_check = query_texts[len(query_texts) - query_held_out :]
    folder = resolve_model_folder(model)
    kwargs: dict[str, Any] = {"device": "cpu"}
    if max_length is not None:
        kwargs.update(query_max_length=max_length, passage_max_length=max_length)
    fp32 = Embedder(folder, **kwargs)
    reference = np.asarray(fp32.encode_corpus(check_texts))
    query_reference = np.asarray(fp32.encode_queries(query_check)) if query_check else None
    # the token rows inference feeds, by the model's own tokenizer: passages with their instruction at the
    # passage limit, queries with theirs at the query limit
    rows: list[Feature] = []
    kinds: tuple[tuple[Literal["passage", "query"], list[str]], ...] = (
        ("passage", calibration),
        ("query", query_calibration),
    )
    for kind, part in kinds:
        if part:
            prepared, limit = fp32.prepare(part, kind, max_length)
            rows += [{"input_ids": feature["input_ids"]} for feature in fp32.tokenize(prepared, limit)]
    offset = position_offset(fp32.config) if backend == "openvino" else None
    del fp32
    if backend == "openvino":  # checked as a user loads it: bf16 around the int8 MatMuls where bf16 is fast
        kwargs.update(backend="openvino", dtype="auto")

    def check(staged: str) -> tuple[float, str, tuple[float, float | None]]:
        quantized = Embedder(staged, quantization="int8-static", **kwargs)
        cosines = _cosines(np.asarray(quantized.encode_corpus(check_texts)), reference)
        query_low = None
        if query_reference is not None:
            query_cosines = _cosines(np.asarray(quantized.encode_queries(query_check)), query_reference)
            query_low = float(query_cosines.min())
            cosines = np.concatenate([cosines, query_cosines])
        low, mean = float(cosines.min()), float(cosines.mean())
        on_queries = "" if query_low is None else f" (queries {query_low:.5f})"
        return low, f"min {low:.5f}{on_queries}, mean {mean:.5f}", (mean, query_low)

    checked = f"{len(check_texts)} held-out texts" + (
        f" and {len(query_check)} queries" if query_check else ""
    )
    result = _first_passing(
        folder,
        out,
        backend,
        "feature-extraction",
        offset,
        rows,
        ladder,
        check,
        threshold,
        lambda low, figures, tried: (
            f"the calibrated int8 graph of {model!r} reaches a minimum cosine of {low:.5f} to fp32 "
            f"(mean {figures[0]:.5f}) on {checked}, below threshold={threshold}; nothing "
            f"was saved to {out!r} (tried {tried}). Try more or more typical calibration "
            "texts, more MatMuls in fp32 (keep_fp32), or a lower threshold; or load the model with "
            "backend='openvino', quantization='int8' (dynamic int8, nothing to calibrate)"
        ),
    )
    (mean, query_low) = result.figures
    return CalibrationReport(
        path=result.path,
        calibration_texts=len(calibration),
        held_out_texts=len(check_texts),
        min_cosine=result.low,
        mean_cosine=mean,
        fp32_nodes=result.fp32_nodes,
        fp32_groups=result.fp32_groups,
        calibration_queries=len(query_calibration),
        held_out_queries=len(query_check),
        query_min_cosine=query_low,
        tried=result.tried,
    )


def rank_agreement(queries: Sequence[str], scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Spearman correlations of ``scores`` with ``reference`` over each query's pairs, one per group: a
    query with at least three pairs is a group, the pairs of the others together make one more.

    Example:
        >>> rank_agreement(["q", "q", "q"], np.array([0.1, 0.5, 0.3]), np.array([1.0, 3.0, 2.0]))
        array([1.])
    """
    from scipy.stats import spearmanr

    groups: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        groups.setdefault(query, []).append(i)
    parts = [g for g in groups.values() if len(g) >= 3]
    rest = [i for g in groups.values() if len(g) < 3 for i in g]
    if len(rest) >= 3 or not parts:
        parts.append(rest)
    out = []
    for part in parts:
        a, b = scores[part], reference[part]
        if np.ptp(b) == 0 or np.ptp(a) == 0:  # no order to agree on: agreement only if neither has one
            out.append(1.0 if np.ptp(a) == np.ptp(b) == 0 else 0.0)
        else:
            out.append(float(spearmanr(a, b).statistic))
    return np.asarray(out)


def calibrate_reranker_int8(
    model: str,
    pairs: Sequence[Any],
    out: str,
    *,
    held_out: int = 100,
    threshold: float = DEFAULT_THRESHOLD,
    max_length: int | None = None,
    keep_fp32: str | Sequence[str] = "auto",
    backend: str = "onnx",
) -> RerankerCalibrationReport:
    """Quantise a cross-encoder's graph to static int8 calibrated on ``pairs``; save it with the model.

    As ``calibrate_int8`` for embedders: the last ``held_out`` pairs only check the result, the others
    calibrate the activation ranges, the ladder of MatMul groups is the same. The check is the order a
    reranker gives: within each query's held-out pairs, the Spearman correlation of the int8 scores with the
    fp32 ones, whose lowest must reach ``threshold``. The pooler and classifier stay unquantised with the
    last layer. Keep a query's pairs together at the end to check them as one ranking.

    Args:
        model: a local cross-encoder folder (or a name bgekit resolves to one) that ``Reranker`` loads.
        pairs: the user's own (query, passage) pairs, passages strings or ``{"title", "text"}`` dicts; a
            few hundred, e.g. a sample of queries each with its first-stage candidates.
        out: the folder to write: the model's files plus the calibrated graph (replaced atomically).
        held_out: how many pairs (taken from the end) check the result and are not calibrated on.
        threshold: the lowest acceptable Spearman correlation within a query's held-out pairs.
        max_length: token limit of a pair; default the reranker's own.
        keep_fp32: as ``calibrate_int8``.
        backend: ``"onnx"`` or ``"openvino"``, as ``calibrate_int8``; the result loads with
            ``Reranker(out, backend=backend, quantization="int8-static")``.

    Returns:
        A ``RerankerCalibrationReport``.

    Raises:
        CalibrationError: the lowest held-out Spearman is below ``threshold`` (nothing written).
        ConfigError: the model is not a cross-encoder (LLM rerankers run on PyTorch only).
        InputError: too few pairs, or a pair that is not a (query, passage) pair.

    Example:
        >>> report = calibrate_reranker_int8(model_path, pairs, "out/ce-int8")   # doctest: +SKIP
        >>> report.min_spearman >= 0.995                                          # doctest: +SKIP
        True
    """
    from bgekit import Reranker
    from bgekit.models.loading import resolve_model_folder

    ladder = _ladder(keep_fp32, backend, threshold)
    plain, _ = as_pair_list(list(pairs), "calibration pairs")
    if held_out < 3 or len(plain) < held_out + 16:
        raise InputError(
            f"calibration needs at least held_out + 16 = {held_out + 16} pairs and held_out >= 3 "
            f"(held_out={held_out}), got {len(plain)}"
        )
    calibration, check_pairs = plain[:-held_out], plain[-held_out:]
    folder = resolve_model_folder(model)
    kwargs: dict[str, Any] = {"device": "cpu"}
    if max_length is not None:
        kwargs["max_length"] = max_length
    fp32 = Reranker(folder, **kwargs)
    if fp32.kind != "cross-encoder":
        raise ConfigError(
            f"{model!r} is a {fp32.kind} reranker; static int8 calibration is for cross-encoders, which "
            "run on ONNX Runtime and OpenVINO"
        )
    reference = np.asarray(fp32.compute_score(check_pairs, normalize=False), dtype=np.float64)
    rows = [pair.feature for pair in fp32.tokenize_pairs(calibration)]
    del fp32
    if backend == "openvino":  # checked as a user loads it: bf16 around the int8 MatMuls where bf16 is fast
        kwargs.update(backend="openvino", dtype="auto")
    queries = [query for query, _ in check_pairs]

    def check(staged: str) -> tuple[float, str, tuple[float, float]]:
        quantized = Reranker(staged, quantization="int8-static", **kwargs)
        scores = np.asarray(quantized.compute_score(check_pairs, normalize=False), dtype=np.float64)
        agreement = rank_agreement(queries, scores, reference)
        low, mean = float(agreement.min()), float(agreement.mean())
        difference = float(np.abs(scores - reference).max())
        return (
            low,
            f"Spearman min {low:.5f}, mean {mean:.5f}, score difference {difference:.4f}",
            (mean, difference),
        )

    result = _first_passing(
        folder,
        out,
        backend,
        "sequence-classification",
        None,
        rows,
        ladder,
        check,
        threshold,
        lambda low, figures, tried: (
            f"the calibrated int8 graph of {model!r} ranks {len(check_pairs)} held-out pairs with a lowest "
            f"Spearman of {low:.5f} to fp32 within a query (mean {figures[0]:.5f}), below "
            f"threshold={threshold}; nothing was saved to {out!r} (tried {tried}). Try more or more typical "
            "calibration pairs, more MatMuls in fp32 (keep_fp32), or a lower threshold; or load the model "
            "with backend='openvino', quantization='int8' (dynamic int8, nothing to calibrate)"
        ),
    )
    mean, difference = result.figures
    return RerankerCalibrationReport(
        path=result.path,
        calibration_pairs=len(calibration),
        held_out_pairs=len(check_pairs),
        min_spearman=result.low,
        mean_spearman=mean,
        max_score_difference=difference,
        fp32_nodes=result.fp32_nodes,
        fp32_groups=result.fp32_groups,
        tried=result.tried,
    )


@dataclass(frozen=True)
class _Kept:
    """The graph ``_first_passing`` kept: where, what it left unquantised, and its check's figures."""

    path: str
    low: float
    figures: Any
    fp32_nodes: tuple[str, ...]
    fp32_groups: tuple[str, ...]
    tried: tuple[str, ...]


Check = Callable[[str], tuple[float, str, Any]]
"""Loads the staged folder's calibrated graph and returns its quality figure (held to the threshold), a
line for the record of what was tried, and the figures the report gives."""


def _first_passing(
    folder: str,
    out: str,
    backend: str,
    task: Task,
    offset: int | None,
    rows: list[Feature],
    ladder: tuple[tuple[str, ...], ...],
    check: Check,
    threshold: float,
    refusal: Callable[[float, Any, str], str],
) -> _Kept:
    """Quantise with each rung of ``ladder`` unquantised in turn, keep the first graph ``check`` holds at
    ``threshold`` or above and write it with the model's files into ``out`` (atomically); else raise
    ``CalibrationError`` with ``refusal``'s message, writing nothing."""
    from bgekit.inference.base import file_fingerprint

    fingerprint = file_fingerprint(folder)[:16]
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.staged.")
    tried: list[str] = []
    try:
        # the model's own files (not its cached graphs): the staged folder has the same fingerprint
        shutil.copytree(folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("onnx", ".*"))
        graph = os.path.join(staged, "onnx", calibrated_graph_name(fingerprint, task, backend))
        os.makedirs(os.path.dirname(graph))
        if backend == "openvino":
            roles, quantize = _openvino_quantizer(folder, fingerprint, task, offset, rows, graph)
        else:
            roles, quantize = _onnx_quantizer(folder, fingerprint, task, rows, graph)
        for groups in ladder:
            excluded = sorted({name for group in groups for name in roles[group]})
            quantize(excluded)
            low, line, figures = check(staged)
            tried.append(f"unquantised {'+'.join(groups) or 'none'}: {line}")
            if low >= threshold:
                break
        else:
            raise CalibrationError(refusal(low, figures, "; ".join(tried)))
        inferred = os.path.join(os.path.dirname(graph), INFERRED_GRAPH)
        if os.path.exists(inferred):  # ONNX Runtime's shape-inferred input: only the calibrated graph stays
            os.remove(inferred)
        replace_folder(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    path = os.path.join(out, "onnx", os.path.basename(graph))
    return _Kept(path, low, figures, tuple(excluded), groups, tuple(tried))


Quantize = Callable[[list[str]], None]
"""Writes the calibrated graph with the named MatMuls left unquantised."""


def _onnx_quantizer(
    folder: str, fingerprint: str, task: Task, rows: list[Feature], graph: str
) -> tuple[dict[str, list[str]], Quantize]:
    """ONNX Runtime's ``quantize_static`` on the fused export: QDQ pairs, per-channel int8 weights,
    asymmetric uint8 activations from a MinMax pass over the token ``rows``."""
    ort = require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_graph = export_onnx(folder, task, None, fingerprint)
    session = ort.InferenceSession(fp32_graph, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    del session
    # shapes and types of every tensor (the fused attention's outputs included), so no MatMul is skipped
    # for an unknown input type
    inferred = os.path.join(os.path.dirname(graph), INFERRED_GRAPH)
    quant_pre_process(fp32_graph, inferred, skip_optimization=True)

    def quantize(excluded: list[str]) -> None:
        quantize_static(
            inferred,
            graph,
            _TextReader(rows, input_names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": False},
        )

    return matmul_groups(inferred), quantize


def _openvino_quantizer(
    folder: str,
    fingerprint: str,
    task: Task,
    offset: int | None,
    rows: list[Feature],
    graph: str,
) -> tuple[dict[str, list[str]], Quantize]:
    """NNCF's post-training quantisation of the plain (or packed) export for OpenVINO: its transformer
    preset (int8 MatMuls with SmoothQuant and bias correction), calibrated on the token ``rows`` one
    unpadded row at a time, as the runner feeds them."""
    openvino = require_openvino()
    nncf = import_nncf("calibration for backend='openvino'")
    source = export_onnx(folder, task, None, fingerprint, fuse=False, packed=offset is not None)
    core = openvino.Core()
    input_names = [port.get_any_name() for port in core.read_model(source).inputs]
    samples = []
    for feature in rows:
        given = _row_inputs(feature)
        if offset is not None:
            given.update(
                unpacked_inputs(given["input_ids"], given["token_type_ids"], given["attention_mask"], offset)
            )
        samples.append({name: given[name].numpy().astype(np.int64) for name in input_names})

    def quantize(excluded: list[str]) -> None:
        quantized = nncf.quantize(
            core.read_model(source),
            nncf.Dataset(samples),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(names=excluded, validate=False),
        )
        openvino.save_model(quantized, graph)

    return matmul_groups(source), quantize


__all__ = [
    "GRAPH_VERSION",
    "CalibrationError",
    "CalibrationReport",
    "RerankerCalibrationReport",
    "calibrate_int8",
    "calibrate_reranker_int8",
    "rank_agreement",
]
