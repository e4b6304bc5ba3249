"""OpenVINO backend: the model's plain ONNX export compiled by OpenVINO for the CPU, in fp32 or bf16.

OpenVINO reads the same cached export as the ONNX backend, without ONNX Runtime's fusions (its own
compiler fuses attention, layer norms and GELU for the CPU it runs on). Its CPU plugin picks bf16 by
default on CPUs with AMX; here the precision is always the model's ``dtype``: ``fp32`` asks for f32
arithmetic, ``bf16`` for bf16 (where the CPU has no bf16 instructions OpenVINO runs f32 instead).

``quantization="int8"`` runs OpenVINO's dynamic int8: NNCF stores the MatMul weights as int8 (per output
channel, asymmetric; :func:`int8_weights_graph`, cached beside the export), and the CPU plugin quantises
each MatMul's input at run time in groups of ``DYNAMIC_GROUP`` values of one token, so an outlier moves only
its own group's scale. Unlike static int8 it needs no calibration texts; unlike ONNX Runtime's dynamic
int8 (one scale per tensor) it keeps the embeddings at full quality (SciFact, all-MiniLM-L6-v2: minimum
cosine 0.9974 to fp32 over all 5,183 documents at 512 tokens).

Like the ONNX runner, the runner is called like a ``transformers`` model, so the batching engine and heads
do not know which backend runs. An embedder whose encoder can be packed (``packing.position_offset``: BERT,
RoBERTa, XLM-RoBERTa) runs the packed export: a batch with more than ``PACK_ABOVE_PADDING`` padding and no
text longer than ``PACK_MAX_LENGTH`` tokens (many short texts of many lengths, as in a server's groups of
small requests) runs with its texts laid end to end in shared rows, each attending only to itself, in one
call; other batches (the engine's length-sorted batches of long texts) run one text per row.

Other graphs (cross-encoders, encoders that cannot be packed) take the attention mask: a batch with little
padding runs as it is; one with more than ``PACK_ABOVE_PADDING`` padding whose rows share few lengths runs
as groups of equal-length rows without their padding (1.2-1.3x faster on such batches); a few rows of many
lengths run padded, as every extra call costs a new input shape. Left-padded batches always run in
groups: an encoder counts position ids from the first column, so left padding would shift them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bgekit.errors import ConfigError, ModelLoadError
from bgekit.inference.onnx_backend import GraphRunner, Task, run_packed
from bgekit.inference.packing import (
    PACK_ABOVE_PADDING,
    PACK_MAX_LENGTH,
    PACK_ROW_TOKENS,
    PACKED_TOKEN_COST,
    PackedBatch,
    padding_share,
    unpacked_inputs,
    worth_packing,
)
from bgekit.io import atomic_path

MIN_ROWS_PER_PACKED_CALL = 8
"""A graph without segment ids runs a batch with more than ``PACK_ABOVE_PADDING`` padding as equal-length
groups when they hold at least this many rows on average: each call has a fixed cost (a new input shape),
so a batch of a few rows of each length runs faster padded."""

_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}

DYNAMIC_GROUP = 128
"""Values of one token that share a scale when ``quantization="int8"`` quantises a MatMul's input at run
time (OpenVINO's ``DYNAMIC_QUANTIZATION_GROUP_SIZE``). On SciFact with all-MiniLM-L6-v2 (2 threads, AMD
EPYC with AVX512-VNNI): 32 gives minimum cosine 0.9988 and is slowest, 128 0.9974-0.9982, 384 0.9967
and fastest; 128 keeps a margin above the 0.995 that full quality asks for."""


_REPORTS_OFF = {"CI": "true", "NNCF_CI": "1"}
"""The switches OpenVINO's and NNCF's usage reports read when they are first imported."""


@contextlib.contextmanager
def _usage_reports_off() -> Iterator[None]:
    """Import OpenVINO or NNCF inside this block so that they send no usage reports.

    Both send usage events to Google Analytics from the importing process (a forked sender process per
    event) unless the user opted out with OpenVINO's ``opt_in_out --opt_out``: OpenVINO on import, NNCF
    on every compression or quantization call. Each reads its switch once, at its first import: OpenVINO
    declines when ``CI`` is ``true``, NNCF is silent when ``NNCF_CI`` is set. The switches hold for the
    import only; the environment is left as it was. A process that imported OpenVINO before bgekit keeps
    whatever that import chose. ``BGEKIT_OPENVINO_TELEMETRY=1`` leaves the reports as OpenVINO sets them.
    """
    if os.environ.get("BGEKIT_OPENVINO_TELEMETRY") == "1":
        yield
        return
    previous = {name: os.environ.get(name) for name in _REPORTS_OFF}
    os.environ.update(_REPORTS_OFF)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def require_openvino() -> Any:
    """OpenVINO, imported with its usage reports off (:func:`_usage_reports_off`)."""
    try:
        with _usage_reports_off():
            import openvino
    except ImportError as exc:
        raise ConfigError("backend='openvino' needs OpenVINO: pip install 'bgekit[openvino]'") from exc
    return openvino


def import_nncf(purpose: str) -> Any:
    """NNCF, imported with its usage reports off (OpenVINO's too, should NNCF import it first);
    ``purpose`` names what needs it in the error when it is not installed."""
    try:
        with _usage_reports_off():
            import nncf
    except ImportError as exc:
        raise ConfigError(f"{purpose} needs NNCF: pip install 'bgekit[openvino]'") from exc
    return nncf


def int8_weights_graph(source: str) -> str:
    """The OpenVINO IR of ``source`` (an ONNX export) with its MatMul weights stored as int8, written beside it
    on first use (``<source stem>-int8-openvino.xml`` and its ``.bin``) and reused after.

    NNCF's weight compression (int8, asymmetric, one scale per output channel) decides which weights to
    compress; it needs no data. The ``.bin`` is renamed into place before the ``.xml``, each atomically, so
    a crash leaves no IR whose ``.xml`` exists without its weights.

    Example:
        >>> int8_weights_graph("model/onnx/feature-extraction-0123abcd-plain-v2.onnx")   # doctest: +SKIP
        'model/onnx/feature-extraction-0123abcd-plain-v2-int8-openvino.xml'
    """
    target = os.path.splitext(source)[0] + "-int8-openvino.xml"
    if os.path.isfile(target):
        return target
    openvino = require_openvino()
    nncf = import_nncf("quantization='int8' with backend='openvino'")
    model = openvino.Core().read_model(source)
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(source)) as tmp:
        staged = os.path.join(tmp, "model.xml")
        openvino.save_model(compressed, staged, compress_to_fp16=False)
        with atomic_path(os.path.splitext(target)[0] + ".bin") as path:
            shutil.copyfile(os.path.join(tmp, "model.bin"), path)
        with atomic_path(target) as path:
            shutil.copyfile(staged, path)
    return target


class OpenVinoRunner(GraphRunner):
    """An OpenVINO model compiled for the CPU, called like a ``transformers`` model.

    Args:
        path: the plain ONNX graph (``export_onnx(..., fuse=False)``).
        task: ``"feature-extraction"`` (returns ``last_hidden_state``) or ``"sequence-classification"``
            (returns ``logits``).
        dtype: ``"fp32"`` or ``"bf16"``, the arithmetic OpenVINO is asked for.
        threads: CPU threads in all (default: torch's thread count).
        streams: calls that may run at once from different threads (see :meth:`set_streams`).
        dynamic_group: quantise MatMul inputs at run time in groups of this many values (a graph with int8
            weights, :func:`int8_weights_graph`); ``None`` runs the MatMuls as the graph has them.

    Example:
        >>> runner = OpenVinoRunner(path, "feature-extraction", "bf16")         # doctest: +SKIP
        >>> runner(input_ids=ids, attention_mask=mask).last_hidden_state.shape   # doctest: +SKIP
        torch.Size([2, 9, 384])
    """

    def __init__(
        self,
        path: str,
        task: Task,
        dtype: str,
        threads: int | None = None,
        streams: int = 1,
        position_offset: int | None = None,
        dynamic_group: int | None = None,
    ) -> None:
        self._openvino = require_openvino()
        if dtype not in _PRECISIONS:
            raise ConfigError(f"backend='openvino' runs dtype 'fp32' or 'bf16', not {dtype!r}")
        self.task, self.path, self.dtype, self.backend = task, path, dtype, "openvino"
        self.position_offset, self.dynamic_group = position_offset, dynamic_group
        self.packed_token_cost = None if position_offset is None else PACKED_TOKEN_COST
        """Short texts share rows (the packed graph): the batch planner's cost of a packed real token."""
        self.packed_max_length = None if position_offset is None else PACK_MAX_LENGTH
        """The longest text a packed batch holds (longer ones run one per row)."""
        self.threads = int(threads or torch.get_num_threads())
        self._local = threading.local()  # an infer request serves one call at a time: one per thread
        self.set_streams(streams)

    def set_streams(self, streams: int) -> None:
        """Compile for ``streams`` calls at once, from different threads, the CPU threads split between
        them (OpenVINO's streams). One stream (the default) gives each call every thread: the fastest
        single call. More streams serve more throughput when many small calls come at once (a server's
        small groups), as a small matrix product keeps one thread busier than two.
        """
        if not isinstance(streams, int) or isinstance(streams, bool) or not 1 <= streams <= self.threads:
            raise ConfigError(
                f"streams={streams!r} is not valid; expected 1 to {self.threads} (one thread per stream at least)"
            )
        if getattr(self, "streams", None) == streams:
            return
        core = self._openvino.Core()
        config = {
            "INFERENCE_PRECISION_HINT": _PRECISIONS[self.dtype],
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": streams,
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        }
        if self.dynamic_group is not None:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(self.dynamic_group)
        try:
            self.compiled = core.compile_model(core.read_model(self.path), "CPU", config)
        except RuntimeError as exc:
            raise ModelLoadError(f"OpenVINO could not compile {self.path!r} for the CPU: {exc}") from exc
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        if ("segment_ids" in self.input_names) != (self.position_offset is not None):
            raise ConfigError(
                f"{self.path!r} and position_offset={self.position_offset!r} disagree: a packed graph "
                "(with segment_ids) needs the position offset, a plain one must not have it"
            )
        self.streams = streams

    def _request(self) -> Any:
        compiled, request = getattr(self._local, "request", (None, None))
        if compiled is not self.compiled:  # first call on this thread, or recompiled since
            request = self.compiled.create_infer_request()
            self._local.request = (self.compiled, request)
        return request

    def _compute(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        padding = padding_share(input_ids, lengths)
        right_padded = bool((real == (torch.arange(real.shape[1]) < lengths[:, None])).all())
        if self.position_offset is not None:
            if not bool(lengths.any()):
                raise ConfigError("every row of the batch is empty (its attention mask is all zeros)")
            capacity = PACK_ROW_TOKENS if worth_packing(input_ids, lengths) else None
            if capacity is None and right_padded:  # one text per row, as it came
                return self._infer(unpacked_inputs(input_ids, token_type_ids, real, self.position_offset))
            batch = PackedBatch(
                input_ids, token_type_ids, real, lengths, offset=self.position_offset, capacity=capacity
            )
            output = self._infer(batch.inputs)
            if capacity is not None and not bool(torch.isfinite(output).all()):
                # one text's NaN reaches the other texts of its row: one text per row names only its own
                batch = PackedBatch(
                    input_ids, token_type_ids, real, lengths, offset=self.position_offset, capacity=None
                )
                output = self._infer(batch.inputs)
            return batch.unpack(output)
        # left padding would shift the position ids of an encoder (it counts from the first column): pack it
        calls = int(lengths[lengths > 0].unique().numel())  # one call per distinct length when packed
        groups_pay = padding > PACK_ABOVE_PADDING and calls * MIN_ROWS_PER_PACKED_CALL <= len(lengths)
        if groups_pay or not right_padded:
            return run_packed(self._run, self.task, input_ids, token_type_ids, real, lengths)
        return self._run(input_ids, token_type_ids, real)

    def _run(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, real: torch.Tensor | None = None
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": torch.ones_like(input_ids) if real is None else real,
        }
        return self._infer(given)

    def _infer(self, given: dict[str, torch.Tensor]) -> torch.Tensor:
        """One call of the compiled graph on the inputs it takes (by name)."""
        feed = {name: given[name].numpy().astype(np.int64) for name in self.input_names}
        result = self._request().infer(feed)
        return torch.from_numpy(np.asarray(result[0], dtype=np.float32))
