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
    calibrated_graph_name,
    export_onnx,
    require_onnxruntime,
)
from bgekit.inference.openvino_backend import require_openvino
from bgekit.inference.packing import position_offset, unpacked_inputs
from bgekit.io import replace_folder

GROUPS = ("ffn-output", "ffn-input", "attention-qkv", "last-layer")
AUTO_LADDER: tuple[tuple[str, ...], ...] = (
    ("ffn-output",),
    ("ffn-output", "ffn-input"),
    ("ffn-output", "ffn-input", "attention-qkv"),
)
"""``keep_fp32="auto"``: the sets of MatMul groups kept in fp32, tried in order, fewest fp32 first."""
OPENVINO_LADDER: tuple[tuple[str, ...], ...] = tuple((*groups, "last-layer") for groups in AUTO_LADDER)
"""The same for ``backend="openvino"``, with the last layer unquantised on every rung. NNCF's int8 of the
last layer's attention output lets a rare short input slip below the threshold unseen by any held-out
sample: calibrated on all-MiniLM-L6-v2 with 200 SciFact documents and 200 queries, every held-out text
and query passed, yet one of the 809 other queries fell to 0.992; with the last layer unquantised, the
lowest of all 1,109 was 0.9985, at about the same speed."""
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
    """ONNX Runtime's CalibrationDataReader over tokenised texts, one unpadded text per call: the graph
    takes no attention mask (bgekit's runner never feeds padding), so calibration sees what inference sees.
    """

    def __init__(self, rows: list[list[int]], input_names: list[str]) -> None:
        self.token_rows = rows
        self.input_names = input_names
        self.rows = self._rows()

    def _rows(self) -> Iterator[dict[str, np.ndarray]]:
        for ids in self.token_rows:
            shape = (1, len(ids))
            given = {"input_ids": np.asarray([ids], np.int64), "token_type_ids": np.zeros(shape, np.int64)}
            # an unfused graph still takes attention_mask: all ones, as the runner feeds it
            yield {name: given.get(name, np.ones(shape, np.int64)) for name in self.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.rows, None)

    def rewind(self) -> None:
        self.rows = self._rows()


def matmul_groups(graph_path: str) -> dict[str, list[str]]:
    """The graph's MatMuls by role: ``ffn-output`` (takes a GELU's output: the FFN down-projection),
    ``ffn-input`` (feeds a GELU), ``attention-qkv`` (query/key/value projections) and ``last-layer``."""
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
    groups: dict[str, list[str]] = {"ffn-output": [], "ffn-input": [], "attention-qkv": [], "last-layer": []}
    for node in matmuls:
        if after_gelu(node.input[0]):
            groups["ffn-output"].append(node.name)
        if feeds_gelu(node):
            groups["ffn-input"].append(node.name)
        if "/attention/self/" in node.name:
            groups["attention-qkv"].append(node.name)
        if last and last in node.name:
            groups["last-layer"].append(node.name)
    return groups


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(1), dtype=np.float64)


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
        keep_fp32: MatMul groups left unquantised (``ffn-output``, ``ffn-input``, ``attention-qkv``,
            ``last-layer``; empty: quantise all), or ``"auto"``: try ``AUTO_LADDER``'s sets in order
            (``OPENVINO_LADDER``'s for OpenVINO) and keep the first that reaches ``threshold``.
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
    from bgekit.inference.base import file_fingerprint
    from bgekit.models.loading import resolve_model_folder

    if backend not in ("onnx", "openvino"):
        raise ConfigError(f"backend={backend!r} is not valid for calibration; choose 'onnx' or 'openvino'")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold={threshold!r} is not valid; give a cosine in (0, 1]")
    ladder = (
        (OPENVINO_LADDER if backend == "openvino" else AUTO_LADDER)
        if keep_fp32 == "auto"
        else (tuple([keep_fp32] if isinstance(keep_fp32, str) else keep_fp32),)
    )
    for groups in ladder:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ConfigError(f"keep_fp32 has unknown groups {unknown}; choose from {list(GROUPS)} or 'auto'")
    plain = [_as_text(t, i) for i, t in enumerate(texts)]
    if held_out < 1 or len(plain) < held_out + 16:
        raise InputError(
            f"calibration needs at least held_out + 16 = {held_out + 16} texts (held_out={held_out}), "
            f"got {len(plain)}"
        )
    calibration, check = plain[:-held_out], plain[-held_out:]
    query_texts = [_as_query(q, i) for i, q in enumerate(queries or [])]
    if queries is not None and len(query_texts) < 8:
        raise InputError(f"calibration queries need at least 8 queries, got {len(query_texts)}")
    query_held_out = min(held_out, len(query_texts) // 2)
    query_calibration = query_texts[: len(query_texts) - query_held_out]
    query_check = query_texts[len(query_texts) - query_held_out :]
    folder = resolve_model_folder(model)
    fingerprint = file_fingerprint(folder)[:16]
    kwargs: dict[str, Any] = {"device": "cpu"}
    if max_length is not None:
        kwargs.update(query_max_length=max_length, passage_max_length=max_length)
    fp32 = Embedder(folder, **kwargs)
    reference = np.asarray(fp32.encode_corpus(check))
    query_reference = np.asarray(fp32.encode_queries(query_check)) if query_check else None
    # the token rows inference feeds, by the model's own tokenizer: passages with their instruction at the
    # passage limit, queries with theirs at the query limit
    rows = []
    kinds: tuple[tuple[Literal["passage", "query"], list[str]], ...] = (
        ("passage", calibration),
        ("query", query_calibration),
    )
    for kind, part in kinds:
        if part:
            prepared, limit = fp32.prepare(part, kind, max_length)
            rows += [feature["input_ids"] for feature in fp32.tokenize(prepared, limit)]
    offset = position_offset(fp32.config) if backend == "openvino" else None
    del fp32
    if backend == "openvino":  # checked as a user loads it: bf16 around the int8 MatMuls where bf16 is fast
        kwargs.update(backend="openvino", dtype="auto")

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.staged.")
    tried: list[str] = []
    try:
        # the model's own files (not its cached graphs): the staged folder has the same fingerprint
        shutil.copytree(folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("onnx", ".*"))
        graph = os.path.join(staged, "onnx", calibrated_graph_name(fingerprint, backend=backend))
        os.makedirs(os.path.dirname(graph))
        if backend == "openvino":
            roles, quantize = _openvino_quantizer(folder, fingerprint, offset, rows, graph)
        else:
            roles, quantize = _onnx_quantizer(folder, fingerprint, rows, graph)
        for groups in ladder:
            excluded = sorted({name for group in groups for name in roles[group]})
            quantize(excluded)
            quantized = Embedder(staged, quantization="int8-static", **kwargs)
            cosines = _cosines(np.asarray(quantized.encode_corpus(check)), reference)
            query_low = None
            if query_reference is not None:
                query_cosines = _cosines(np.asarray(quantized.encode_queries(query_check)), query_reference)
                query_low = float(query_cosines.min())
                cosines = np.concatenate([cosines, query_cosines])
            del quantized
            low, mean = float(cosines.min()), float(cosines.mean())
            on_queries = "" if query_low is None else f" (queries {query_low:.5f})"
            tried.append(
                f"unquantised {'+'.join(groups) or 'none'}: min {low:.5f}{on_queries}, mean {mean:.5f}"
            )
            if low >= threshold:
                break
        else:
            checked = f"{len(check)} held-out texts" + (
                f" and {len(query_check)} queries" if query_check else ""
            )
            raise CalibrationError(
                f"the calibrated int8 graph of {model!r} reaches a minimum cosine of {low:.5f} to fp32 "
                f"(mean {mean:.5f}) on {checked}, below threshold={threshold}; nothing "
                f"was saved to {out!r} (tried {'; '.join(tried)}). Try more or more typical calibration "
                "texts, more MatMuls in fp32 (keep_fp32), or a lower threshold"
            )
        inferred = os.path.join(os.path.dirname(graph), INFERRED_GRAPH)
        if os.path.exists(inferred):  # ONNX Runtime's shape-inferred input: only the calibrated graph stays
            os.remove(inferred)
        replace_folder(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return CalibrationReport(
        path=os.path.join(out, "onnx", os.path.basename(graph)),
        calibration_texts=len(calibration),
        held_out_texts=len(check),
        min_cosine=low,
        mean_cosine=mean,
        fp32_nodes=tuple(excluded),
        fp32_groups=tuple(groups),
        calibration_queries=len(query_calibration),
        held_out_queries=len(query_check),
        query_min_cosine=query_low,
    )


Quantize = Callable[[list[str]], None]
"""Writes the calibrated graph with the named MatMuls left unquantised."""


def _onnx_quantizer(
    folder: str, fingerprint: str, rows: list[list[int]], graph: str
) -> tuple[dict[str, list[str]], Quantize]:
    """ONNX Runtime's ``quantize_static`` on the fused export: QDQ pairs, per-channel int8 weights,
    asymmetric uint8 activations from a MinMax pass over the token ``rows``."""
    ort = require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_graph = export_onnx(folder, "feature-extraction", None, fingerprint)
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


def import_nncf() -> Any:
    """NNCF, imported with its usage reports to Intel switched off.

    NNCF sends usage events unless its own CI switch (``NNCF_CI``) is set when it is first imported; it
    reads the switch then, once. It is set for the import only, so calibration sends nothing and the
    environment is left as it was.
    """
    previous = os.environ.get("NNCF_CI")
    os.environ["NNCF_CI"] = "1"
    try:
        import nncf
    except ImportError as exc:
        raise ConfigError(
            "calibration for backend='openvino' needs NNCF: pip install 'bgekit[openvino]'"
        ) from exc
    finally:
        if previous is None:
            del os.environ["NNCF_CI"]
        else:
            os.environ["NNCF_CI"] = previous
    return nncf


def _openvino_quantizer(
    folder: str,
    fingerprint: str,
    offset: int | None,
    rows: list[list[int]],
    graph: str,
) -> tuple[dict[str, list[str]], Quantize]:
    """NNCF's post-training quantisation of the plain (or packed) export for OpenVINO: its transformer
    preset (int8 MatMuls with SmoothQuant and bias correction), calibrated on the token ``rows`` one
    unpadded text at a time, as the runner feeds them."""
    openvino = require_openvino()
    nncf = import_nncf()
    source = export_onnx(
        folder, "feature-extraction", None, fingerprint, fuse=False, packed=offset is not None
    )
    core = openvino.Core()
    input_names = [port.get_any_name() for port in core.read_model(source).inputs]
    samples = []
    for ids in rows:
        row = torch.tensor([ids])
        given = {
            "input_ids": row,
            "token_type_ids": torch.zeros_like(row),
            "attention_mask": torch.ones_like(row),
        }
        if offset is not None:
            given.update(unpacked_inputs(row, given["token_type_ids"], given["attention_mask"], offset))
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


__all__ = ["GRAPH_VERSION", "CalibrationError", "CalibrationReport", "calibrate_int8"]
