"""ONNX Runtime backend: export a Hugging Face encoder once, optionally quantise it to int8, run it.

The exported graph is cached beside the model (``<model>/onnx/``, or ``~/.cache/bgekit/onnx/`` when the
model folder is read-only), keyed by a hash of the model's files, so it is rebuilt only when the weights
change. BERT-family graphs (BERT, RoBERTa, XLM-RoBERTa) are fused with ONNX Runtime's transformer optimizer
into mask-free ``MultiHeadAttention`` (ONNX Runtime's CPU flash-attention kernel runs only without a mask)
and bias-GELU; int8 is ONNX Runtime's dynamic quantisation with per-channel weights (per-tensor weights
lose too much accuracy on MiniLM-size models). Skip-layer-norm fusion stays off: on CPU the fused kernel
is about 3x slower than the plain Add and LayerNormalization it replaces.

The runner is called like a ``transformers`` model, so the batching engine and heads do not know which
backend runs. It never feeds padding to the graph: the rows of a batch are grouped by their number of real
tokens and each group runs unpadded (packed), so attention needs no mask and padding costs nothing; the
outputs are scattered back to the padded layout the caller expects.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch

from bgekit.errors import ConfigError, ModelLoadError
from bgekit.inference.packing import PackedEncoder, position_offset
from bgekit.io import atomic_path

Task = Literal["feature-extraction", "sequence-classification"]
_FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}
# bump when the export or fusion changes, so cached graphs of older builds are not reused
GRAPH_VERSION = "v2"
DISABLED_SESSION_OPTIMIZERS = ["SkipLayerNormFusion"]


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "backend='onnx' and quantization='int8' need ONNX Runtime: pip install 'bgekit[onnx]'"
        ) from exc
    return onnxruntime


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes the graph with it)
    except ImportError as exc:
        raise ConfigError(
            "exporting the model needs the onnx package: pip install 'bgekit[openvino]' (or 'bgekit[onnx]')"
        ) from exc


def _cache_folder(model_folder: str, key: str) -> str:
    beside = os.path.join(model_folder, "onnx")
    try:
        os.makedirs(beside, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=beside):
            pass
        return beside
    except OSError:
        fallback = os.path.join(os.path.expanduser("~/.cache/bgekit/onnx"), key)
        os.makedirs(fallback, exist_ok=True)
        return fallback


class _Wrapper(torch.nn.Module):
    """Positional-input wrapper for export: returns the one tensor the task needs."""

    def __init__(self, model: Any, names: list[str], task: Task) -> None:
        super().__init__()
        self.model, self.names, self.task = model, names, task

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=True)
        return out.last_hidden_state if self.task == "feature-extraction" else out.logits


def calibrated_graph_name(fingerprint: str, task: Task = "feature-extraction", backend: str = "onnx") -> str:
    """File name (under ``<model>/onnx/``) of a statically quantised graph written by ``calibrate``: an ONNX
    QDQ graph for ONNX Runtime, an OpenVINO IR (``.xml`` beside its ``.bin``) for OpenVINO.

    Example:
        >>> calibrated_graph_name("0123abcd", backend="openvino")
        'feature-extraction-0123abcd-int8-static-openvino-v2.xml'
    """
    if backend == "openvino":
        return f"{task}-{fingerprint}-int8-static-openvino-{GRAPH_VERSION}.xml"
    return f"{task}-{fingerprint}-int8-static-{GRAPH_VERSION}.onnx"


def _calibration_input(task: Task) -> str:
    """The ``bgekit quantize`` option that calibrates a model of this task."""
    return "--corpus FILE" if task == "feature-extraction" else "--pairs FILE"


def export_onnx(
    model_folder: str,
    task: Task,
    quantization: str | None,
    fingerprint: str,
    fuse: bool = True,
    packed: bool = False,
) -> str:
    """Path of the cached ONNX graph for ``model_folder`` (exported, fused and quantised on first use).

    ``quantization="int8-static"`` is never built here: it needs calibration texts, so it is the graph
    ``bgekit.inference.calibrate.calibrate_int8`` saved beside the model (an error says how to make it).
    ``fuse=False`` gives the plain exported graph (standard ONNX operators, attention mask kept) that other
    runtimes such as OpenVINO read; it needs the ``onnx`` package but not ONNX Runtime. ``packed=True`` (with
    ``fuse=False``, an encoder that ``packing.position_offset`` accepts) gives that plain graph with position
    and segment ids as inputs instead of the attention mask, so short texts can share a row.
    """
    if quantization not in (None, "int8", "int8-static"):
        raise ConfigError(f"quantization={quantization!r} is not valid; choose None, 'int8' or 'int8-static'")
    if packed and (fuse or quantization or task != "feature-extraction"):
        raise ConfigError("a packed graph is a plain (unfused, unquantised) feature-extraction export")
    if fuse or quantization:
        require_onnxruntime()
    else:
        _require_onnx()
    if quantization == "int8-static":
        calibrated = os.path.join(model_folder, "onnx", calibrated_graph_name(fingerprint, task))
        if not os.path.isfile(calibrated):
            raise ConfigError(
                f"quantization='int8-static' needs a calibrated graph at {calibrated!r} (for these weights); "
                f"make it with: bgekit quantize --model MODEL {_calibration_input(task)} --out {model_folder}"
            )
        return calibrated
    folder = _cache_folder(model_folder, fingerprint)
    suffix = "int8" if quantization else ("fp32" if fuse else ("packed" if packed else "plain"))
    target = os.path.join(folder, f"{task}-{fingerprint}-{suffix}-{GRAPH_VERSION}.onnx")
    if os.path.isfile(target):
        return target
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_folder)
    auto = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(model_folder, attn_implementation="eager").eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load {model_folder!r} for ONNX export: {exc}") from exc
    names = ["input_ids", "attention_mask"]
    if getattr(config, "type_vocab_size", 0) and config.type_vocab_size > 1:
        names.append("token_type_ids")
    wrapper: torch.nn.Module = _Wrapper(model, names, task)
    dummy = tuple(
        torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else torch.zeros(2, 8, dtype=torch.long)
        for n in names
    )
    if packed:
        if position_offset(config) is None:
            raise ConfigError(f"{model_folder!r} ({config.model_type}) has no packed export")
        names = [n for n in names if n != "attention_mask"] + ["position_ids", "segment_ids"]
        wrapper = PackedEncoder(model, names)
        examples = {
            "position_ids": torch.arange(8).repeat(2, 1),
            "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
        }
        dummy = tuple(examples.get(n, torch.ones(2, 8, dtype=torch.long)) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["output"] = {0: "batch", 1: "sequence"} if task == "feature-extraction" else {0: "batch"}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        raw = os.path.join(tmp, "model.onnx")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper,
                dummy,
                raw,
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        current = raw
        model_type = _FUSABLE.get(getattr(config, "model_type", "")) if fuse else None
        if model_type:
            from onnxruntime.transformers import optimizer
            from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions

            options = FusionOptions(model_type)
            options.use_multi_head_attention = True
            options.attention_mask_format = AttentionMaskFormat.NoMask  # the runner never feeds padding
            options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
            fused = optimizer.optimize_model(
                raw,
                model_type=model_type,
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                optimization_options=options,
            )
            current = os.path.join(tmp, "fused.onnx")
            fused.save_model_to_file(current)
        if quantization == "int8":
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = os.path.join(tmp, "int8.onnx")
            quantize_dynamic(
                current,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            current = quantized
        with atomic_path(target) as staged:  # a crash never leaves half a graph under the final name
            shutil.copyfile(current, staged)
    _remove_superseded(folder, task, suffix, keep=target)
    return target


def _remove_superseded(folder: str, task: Task, suffix: str, keep: str) -> None:
    """Delete this folder's cached graphs of the same task and precision that ``keep`` replaces, and the
    OpenVINO int8 IRs made from them (``<graph stem>-int8-openvino.xml/.bin``, ``int8_weights_graph``).

    They belong to older weights (another fingerprint) or an older export format (another version) and
    would never be loaded again; for a model the size of BGE-M3 each one is 2 GB.
    """
    # "<task>-<fingerprint>-<suffix>[-v<N>].onnx"; a calibrated "-int8-static-" graph is the user's, not a cache
    pattern = re.compile(
        rf"({re.escape(task)}-[0-9a-f]+-{suffix}(?:-v\d+)?)(?:\.onnx|-int8-openvino\.(?:xml|bin))"
    )
    kept = os.path.splitext(os.path.basename(keep))[0]
    for name in os.listdir(folder):
        match = pattern.fullmatch(name)
        if match and match.group(1) != kept:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def batch_on_cpu(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A runner's inputs on the CPU: ids, token types (zeros when absent), real-token mask, lengths.

    Example:
        >>> batch_on_cpu(torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]]), None)[3]
        tensor([2])
    """
    input_ids = input_ids.cpu()
    token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.cpu()
    real = (
        torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu() > 0
    )
    return input_ids, token_type_ids, real, real.sum(1)


def run_packed(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    task: Task,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    real: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Run each group of equal-length rows without its padding; scatter back to the padded layout.

    ``run(input_ids, token_type_ids)`` computes one unpadded group; ``real`` marks the real tokens of the
    padded batch (left or right padding alike) and ``lengths`` counts them per row.

    Example:
        >>> ids = torch.tensor([[5, 6, 0], [7, 0, 0]]); real = ids > 0
        >>> run_packed(lambda i, t: i[..., None].float(), "feature-extraction", ids, ids * 0, real, real.sum(1))[..., 0]
        tensor([[5., 6., 0.],
                [7., 0., 0.]])
    """
    if not bool(lengths.any()):
        raise ConfigError("every row of the batch is empty (its attention mask is all zeros)")
    output: torch.Tensor | None = None
    for length in lengths[lengths > 0].unique().tolist():
        rows = (lengths == length).nonzero()  # (g, 1): broadcasts against the positions below
        positions = real[rows.squeeze(1)].nonzero()[:, 1].view(len(rows), length)
        result = run(input_ids[rows, positions], token_type_ids[rows, positions])
        if output is None:
            rows_shape = input_ids.shape if task == "feature-extraction" else input_ids.shape[:1]
            output = result.new_zeros((*rows_shape, *result.shape[len(rows_shape) :]))
        if task == "feature-extraction":
            output[rows, positions] = result
        else:
            output[rows.squeeze(1)] = result
    assert output is not None
    return output


class GraphRunner:
    """What the ONNX Runtime and OpenVINO runners share: called like a ``transformers`` model on the CPU.

    A subclass sets ``task`` and ``backend`` and implements ``_compute`` (one padded batch on the CPU, with its
    real-token mask and lengths, to the output tensor).
    """

    task: Task
    backend: str

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SimpleNamespace:
        if input_ids is None:
            raise ConfigError(f"backend={self.backend!r} needs input_ids")
        output = self._compute(*batch_on_cpu(input_ids, attention_mask, token_type_ids))
        if self.task == "feature-extraction":
            return SimpleNamespace(last_hidden_state=output)
        return SimpleNamespace(logits=output)

    __call__ = forward

    def _compute(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: Any) -> GraphRunner:
        if torch.device(device).type != "cpu":
            raise ConfigError(f"backend={self.backend!r} runs on the CPU; use backend='torch' for GPUs")
        return self

    def eval(self) -> GraphRunner:
        return self


class OnnxRunner(GraphRunner):
    """An ONNX Runtime session called like a ``transformers`` model.

    Example:
        >>> runner = OnnxRunner(path, "feature-extraction")               # doctest: +SKIP
        >>> runner(input_ids=ids, attention_mask=mask).last_hidden_state   # doctest: +SKIP
    """

    def __init__(self, path: str, task: Task, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_SESSION_OPTIMIZERS
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.task, self.path, self.backend = task, path, "onnx"

    def _compute(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        if bool((lengths == input_ids.shape[1]).all()):
            return self._run(input_ids, token_type_ids)
        return run_packed(self._run, self.task, input_ids, token_type_ids, real, lengths)

    def _run(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        given = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        feed = {
            name: given[name].numpy().astype(np.int64)
            if name in given
            else np.ones(input_ids.shape, np.int64)
            for name in self.input_names  # an unfused graph still takes attention_mask: all ones when packed
        }
        return torch.from_numpy(self.session.run(None, feed)[0])
