"""Merging models by weighted averaging of their weights (LM-Cocktail), for embedders and rerankers.

``merge_models(["base/", "finetuned/"], "merged/", weights=[0.5, 0.5])`` averages the state dicts of
models with the same architecture. With ``example_data`` the weights are chosen from a few examples, as
LM-Cocktail does: each model's loss on the examples is computed, and the weights are
``softmax(-loss / temperature)``, so a model that fits the examples better gets more weight. Unlike
FlagEmbedding's merger this works for rerankers too (grouped cross-entropy of the reranker's scores).
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from bgekit.errors import ConfigError, DataFormatError, InputError, ModelLoadError
from bgekit.inference.arrays import dense_array
from bgekit.io import iter_jsonl, replace_folder
from bgekit.models.loading import resolve_model_folder
from bgekit.models.settings import SETTINGS_FILE, read_json, read_saved_settings, write_saved_settings

ModelKind = Literal["auto", "embedder", "reranker"]

WEIGHTS_FILE = "model.safetensors"
DEFAULT_TEMPERATURE = 5.0
"""LM-Cocktail's default: losses differ by fractions of a nat, so weights stay close to uniform unless a
model is clearly worse on the examples."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".ot")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------------------- state dicts
def weight_files(folder: str) -> list[str]:
    """The weight files of a model folder: safetensors preferred, then PyTorch ``.bin`` (shards in order).

    Raises:
        ModelLoadError: for a LoRA adapter folder (merge the adapter first) or a folder without weights.
    """
    for index_name in _WEIGHT_INDEXES:
        index_path = os.path.join(folder, index_name)
        if os.path.isfile(index_path):
            shards = sorted(set(read_json(index_path).get("weight_map", {}).values()))
            return [os.path.join(folder, shard) for shard in shards]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin"):
        found = sorted(p for p in glob.glob(os.path.join(folder, pattern)) if "adapter_model" not in p)
        if found:
            return found
    if glob.glob(os.path.join(folder, "adapter_model.*")):
        raise ModelLoadError(
            f"{folder!r} holds a LoRA adapter, not full weights; merge it into its base model first "
            "(save the fine-tuned reranker with merge_lora=True, or PeftModel.merge_and_unload())"
        )
    raise ModelLoadError(f"{folder!r} has no model weights (model.safetensors or pytorch_model.bin)")


def read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a model folder, as saved (keys as in the checkpoint, dtypes kept).

    Example:
        >>> state = read_state_dict("my-model/")   # doctest: +SKIP
    """
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state.update(load_file(path, device="cpu"))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def tensor_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a model folder, read from safetensors headers without loading weights."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(folder):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            shapes.update({key: tuple(value.shape) for key, value in state.items()})
    return shapes


def architecture_of(folder: str) -> tuple[str | None, list[str]]:
    """``(model_type, architectures)`` from the folder's ``config.json`` (``None``/``[]`` when absent)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None, []
    config = read_json(path)
    return config.get("model_type"), list(config.get("architectures") or [])


def check_same_architecture(reference: str, other: str) -> None:
    """Raise ConfigError when two model folders declare different ``model_type`` values."""
    ref_type, ref_arch = architecture_of(reference)
    other_type, other_arch = architecture_of(other)
    if ref_type and other_type and ref_type != other_type:
        raise ConfigError(
            f"cannot merge models of different architectures: {reference!r} is {ref_type} {ref_arch}, "
            f"{other!r} is {other_type} {other_arch}"
        )


def rebuilt_buffers(folder: str) -> frozenset[str]:
    """Checkpoint keys of buffers that the folder's architecture rebuilds when it loads (non-persistent
    buffers such as BERT's ``embeddings.position_ids``), each with and without the base-model prefix.

    Older saves store such buffers and newer ones leave them out, so two checkpoints of one model can
    differ by them; merging compares and averages parameters only. Empty when the architecture cannot
    be built here (a model that needs ``trust_remote_code``, or no ``config.json``).

    Example:
        >>> "embeddings.position_ids" in rebuilt_buffers("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        True
    """
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        architectures = list(getattr(config, "architectures", None) or [])
        model_class = getattr(transformers, architectures[0], None) if architectures else None
        with torch.device("meta"):
            if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
                model = model_class(config)
            else:
                model = transformers.AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 (no architecture to ask: compare every tensor, as before)
        return frozenset()
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    names: set[str] = set()
    for module_name, module in model.named_modules():
        for buffer in getattr(module, "_non_persistent_buffers_set", ()):
            name = f"{module_name}.{buffer}" if module_name else buffer
            names.add(name)
            if prefix != "." and name.startswith(prefix):
                names.add(name[len(prefix) :])
            elif prefix != ".":
                names.add(prefix + name)
    return frozenset(names)


def _without(state: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key not in keys}


def check_same_tensors(
    reference: Mapping[str, Any], other: Mapping[str, Any], reference_name: str, other_name: str
) -> None:
    """Raise ConfigError naming the first tensor (in ``reference`` order) missing from or shaped
    differently in ``other``, or present only in ``other``. Values are tensors or shapes.

    Example:
        >>> a = {"w": torch.zeros(2, 3)}; b = {"w": torch.zeros(3, 2)}
        >>> check_same_tensors(a, b, "A", "B")
        Traceback (most recent call last):
        ...
        bgekit.errors.ConfigError: cannot merge A and B: tensor 'w' has shape [2, 3] in A but [3, 2] in B
    """
    for key, value in reference.items():
        if key not in other:
            raise ConfigError(
                f"cannot merge {reference_name} and {other_name}: tensor {key!r} is in {reference_name} "
                f"but not in {other_name} (different architectures or heads)"
            )
        shape, other_shape = _shape_of(value), _shape_of(other[key])
        if shape != other_shape:
            raise ConfigError(
                f"cannot merge {reference_name} and {other_name}: tensor {key!r} has shape "
                f"{list(shape)} in {reference_name} but {list(other_shape)} in {other_name}"
            )
    extra = [key for key in other if key not in reference]
    if extra:
        raise ConfigError(
            f"cannot merge {reference_name} and {other_name}: tensor {extra[0]!r} is in {other_name} "
            f"but not in {reference_name} (different architectures or heads)"
        )


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def normalize_weights(weights: Sequence[float], n_models: int) -> list[float]:
    """Validate merge weights; weights not summing to 1 are rescaled with a warning.

    Example:
        >>> normalize_weights([0.5, 0.5], 2)
        [0.5, 0.5]
    """
    if len(weights) != n_models:
        raise ConfigError(f"got {len(weights)} weight(s) for {n_models} model(s); give one weight per model")
    values = [float(w) for w in weights]
    for i, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"weights[{i}]={value!r} is not valid; weights must be finite and >= 0")
    total = sum(values)
    if total <= 0:
        raise ConfigError(f"weights {values} sum to {total}; at least one weight must be positive")
    if abs(total - 1.0) > 1e-6:
        warnings.warn(f"merge weights {values} sum to {total:g}, not 1; normalising them", stacklevel=2)
        values = [v / total for v in values]
    return values


def merge_state_dicts(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` tensor by tensor, computed in float32 and cast back to the first
    model's dtype. Integer/bool buffers (e.g. ``position_ids``) must be equal and are copied.

    Example:
        >>> a = {"w": torch.ones(2)}; b = {"w": torch.zeros(2)}
        >>> merge_state_dicts([a, b], [0.25, 0.75])["w"].tolist()
        [0.25, 0.25]
    """
    names = list(names) if names is not None else [f"model {i}" for i in range(len(states))]
    merged: dict[str, torch.Tensor] = {}
    accumulate_into(merged, states[0], weights[0], names[0], names[0], first=True)
    for state, weight, name in zip(states[1:], weights[1:], names[1:], strict=True):
        accumulate_into(merged, state, weight, names[0], name, first=False)
    return finish_merge(merged, states[0])


def accumulate_into(
    merged: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    weight: float,
    reference_name: str,
    name: str,
    *,
    first: bool,
) -> None:
    """Add ``weight * state`` into the float32 running sum ``merged`` (one model at a time keeps memory at
    two copies of the model, whatever the number of models)."""
    if not first:
        check_same_tensors(merged, state, reference_name, name)
    for key, tensor in state.items():
        if tensor.is_floating_point():
            contribution = tensor.to(torch.float32) * weight
            merged[key] = contribution if first else merged[key].add_(contribution)
        elif first:
            merged[key] = tensor.clone()
        elif not torch.equal(merged[key], tensor):
            raise ConfigError(
                f"cannot merge {reference_name} and {name}: non-float tensor {key!r} differs between them"
            )


def finish_merge(
    merged: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Cast the float32 sums back to the reference dtypes, contiguous (as safetensors wants)."""
    return {key: value.to(reference[key].dtype).contiguous() for key, value in merged.items()}


# ------------------------------------------------------------------------------- weights from data
def cocktail_weights(losses: Sequence[float], temperature: float = DEFAULT_TEMPERATURE) -> list[float]:
    """LM-Cocktail's weights: ``softmax(-loss / temperature)`` over the models.

    Example:
        >>> [round(w, 3) for w in cocktail_weights([1.0, 1.0])]
        [0.5, 0.5]
    """
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature!r} is not valid; it must be > 0")
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise InputError(f"model {i} has a non-finite loss ({loss}) on the example data")
    values = torch.tensor([-float(x) / temperature for x in losses], dtype=torch.float64)
    return [float(w) for w in torch.softmax(values, dim=0)]


def read_examples(path: str, max_examples: int | None = None) -> list[dict[str, Any]]:
    """Read fine-tuning style examples (``query``, ``pos``, ``neg``) for choosing merge weights.

    Raises:
        DataFormatError: naming file and line for a row without a string ``query``, a non-empty list ``pos``
            of strings, or with a ``neg`` that is not a list of strings.
    """
    examples: list[dict[str, Any]] = []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataFormatError("expected a JSON object with 'query', 'pos' and 'neg'", path, line_no)
        if not isinstance(row.get("query"), str):
            raise DataFormatError("field 'query' is missing or not a string", path, line_no)
        for field_name in ("pos", "neg"):
            value = row.get(field_name, [] if field_name == "neg" else None)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise DataFormatError(f"field {field_name!r} must be a list of strings", path, line_no)
            row[field_name] = value
        if not row["pos"]:
            raise DataFormatError(
                "field 'pos' is empty; each example needs a positive passage", path, line_no
            )
        examples.append(row)
        if max_examples is not None and len(examples) >= max_examples:
            break
    if not examples:
        raise DataFormatError("no examples found", path)
    return examples


def detect_kind(folder: str) -> Literal["embedder", "reranker"]:
    """``reranker`` when ``bgekit.json`` has a reranker section or the config is a sequence classifier."""
    path = os.path.join(folder, SETTINGS_FILE)
    if os.path.isfile(path):
        data = read_json(path)
        if isinstance(data, dict) and "reranker" in data:
            return "reranker"
        if isinstance(data, dict) and "embedder" in data:
            return "embedder"
    _, architectures = architecture_of(folder)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "reranker"
    if any(a.endswith("ForCausalLM") for a in architectures):
        raise ConfigError(
            f"cannot tell whether {folder!r} is an embedder or an LLM reranker; pass kind='embedder' or "
            "kind='reranker' (--kind on the command line)"
        )
    return "embedder"


def embedder_example_loss(
    folder: str,
    examples: list[dict[str, Any]],
    *,
    negatives: int = 7,
    temperature: float = 0.02,
    **model_kwargs: Any,
) -> float:
    """Mean InfoNCE loss of an embedder on the examples.

    Each query is scored against every example's positive (its first) and negatives (up to
    ``negatives`` each), so the other examples serve as in-batch negatives:
    ``loss = mean_q -log softmax(s(q, P) / temperature)[pos(q)]`` with ``s`` the embedder's similarity
    (its own pooling, normalisation and instructions).
    """
    from bgekit.inference.embedder import Embedder

    passages: list[str] = []
    targets: list[int] = []
    for example in examples:
        targets.append(len(passages))
        passages.append(example["pos"][0])
        passages.extend(example["neg"][:negatives])
    with Embedder(folder, show_progress=False, **model_kwargs) as model:
        q = torch.from_numpy(dense_array(model.encode_queries([e["query"] for e in examples])))
        p = torch.from_numpy(dense_array(model.encode_corpus(passages)))
    scores = q @ p.T / temperature
    return float(torch.nn.functional.cross_entropy(scores, torch.tensor(targets)))


def reranker_example_loss(
    folder: str, examples: list[dict[str, Any]], *, negatives: int = 7, **model_kwargs: Any
) -> float:
    """Mean grouped cross-entropy of a reranker on the examples.

    Each example's group is its first positive and up to ``negatives`` negatives:
    ``loss = mean_q -log softmax(score(q, group))[0]`` with the reranker's raw scores (logits).
    Groups may differ in size (examples with fewer negatives).
    """
    import bgekit

    model = bgekit.Reranker(folder, show_progress=False, **model_kwargs)
    pairs: list[tuple[str, str]] = []
    sizes: list[int] = []
    for example in examples:
        group = [example["pos"][0], *example["neg"][:negatives]]
        pairs.extend((example["query"], passage) for passage in group)
        sizes.append(len(group))
    scores = torch.tensor(model.compute_score(pairs), dtype=torch.float64).reshape(-1)
    if hasattr(model, "close"):
        model.close()
    losses = [-torch.log_softmax(group, dim=0)[0] for group in torch.split(scores, sizes)]
    return float(torch.stack(losses).mean())


def example_losses(
    folders: Sequence[str],
    examples: list[dict[str, Any]],
    kind: ModelKind = "auto",
    *,
    negatives: int = 7,
    **model_kwargs: Any,
) -> list[float]:
    """Each model's loss on the examples (see ``embedder_example_loss`` / ``reranker_example_loss``)."""
    losses = []
    for folder in folders:
        model_kind = detect_kind(folder) if kind == "auto" else kind
        if model_kind == "reranker":
            losses.append(reranker_example_loss(folder, examples, negatives=negatives, **model_kwargs))
        else:
            losses.append(embedder_example_loss(folder, examples, negatives=negatives, **model_kwargs))
    return losses


# --------------------------------------------------------------------------------------------- saving
def _companion_files(folder: str) -> list[str]:
    """Files to copy beside the merged weights: config, tokenizer, bgekit.json, sentence-transformers
    module configs (``modules.json`` and its module folders, e.g. ``1_Pooling``). Never weights or code."""
    keep: list[str] = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(_WEIGHT_SUFFIXES) or name in _WEIGHT_INDEXES or name.endswith(".py"):
                continue
            if name.startswith((".", "adapter_")):
                continue
            keep.append(name)
    modules_path = os.path.join(folder, "modules.json")
    if os.path.isfile(modules_path):
        for module in read_json(modules_path):
            sub = module.get("path") if isinstance(module, dict) else None
            if sub and os.path.isdir(os.path.join(folder, sub)):
                keep.append(sub)
    return keep


def write_merged(
    output: str, state: dict[str, torch.Tensor], source: str, *, overwrite: bool = False, info: dict[str, Any]
) -> None:
    """Write ``state`` as ``model.safetensors`` with the source's config, tokenizer and ``bgekit.json``,
    into a temporary folder renamed to ``output`` at the end (readers never see a half-written model)."""
    from safetensors.torch import save_file

    output = os.path.abspath(output)
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)) and not overwrite:
        raise ConfigError(f"output {output!r} already exists; choose a new folder or pass overwrite=True")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.merging.")
    try:
        for name in _companion_files(source):
            src = os.path.join(source, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name))
            else:
                shutil.copy2(src, os.path.join(tmp, name))
        save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        kind = info.get("kind")
        if kind in ("embedder", "reranker") and not read_saved_settings(tmp, kind):
            _write_resolved_settings(tmp, source, kind)
        with open(os.path.join(tmp, "merge_info.json"), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
        replace_folder(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_resolved_settings(folder: str, source: str, kind: str) -> None:
    # a source without bgekit.json loads from sentence-transformers files or the published table; write
    # what it resolved to, so the merged folder loads the same way wherever it is moved
    if kind == "embedder":
        from bgekit.models.settings import resolve_embedder_settings

        settings, _ = resolve_embedder_settings(source, source, {})
        data = settings.to_dict()
        data.pop("extra", None)
        data = {k: v for k, v in data.items() if v is not None}
        write_saved_settings(folder, "embedder", data)


# ---------------------------------------------------------------------------------------- entry point
def merge_models(
    models: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    weights: Sequence[float] | None = None,
    *,
    example_data: str | os.PathLike[str] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    kind: ModelKind = "auto",
    max_examples: int | None = None,
    negatives: int = 7,
    overwrite: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> list[float]:
    """Merge models of one architecture by weighted averaging and save the result to ``output``.

    Args:
        models: two or more model folders (or hub names) with identical tensor names and shapes; the
            first one's config, tokenizer and ``bgekit.json`` are copied to the output.
        output: the folder to write (must not exist unless ``overwrite``).
        weights: one weight per model; rescaled with a warning when they do not sum to 1. Default:
            uniform, or chosen from ``example_data``.
        example_data: JSONL with ``query``, ``pos``, ``neg``: the weights become
            ``softmax(-loss_i / temperature)`` of each model's loss on these examples (LM-Cocktail).
        temperature: the softmax temperature for ``example_data`` (LM-Cocktail's default, 5.0).
        kind: ``embedder`` or ``reranker`` for the example loss; ``auto`` reads ``bgekit.json``/config.
        max_examples: use only the first examples of ``example_data``.
        negatives: negatives per example used in the loss (LM-Cocktail uses 7).
        overwrite: replace an existing ``output`` folder.
        model_kwargs: passed to ``Embedder``/``Reranker`` when computing losses (``device``, ``dtype``...).

    Returns:
        The weights used, one per model.

    Raises:
        ConfigError: fewer than two models, both or neither of ``weights``/``example_data``... or models
            whose tensors differ (the message names the first mismatched tensor).

    Example:
        >>> merge_models(["base/", "finetuned/"], "merged/", weights=[0.5, 0.5])   # doctest: +SKIP
        [0.5, 0.5]
    """
    names = [os.fspath(m) for m in models]
    if len(names) < 2:
        raise ConfigError(f"merging needs at least two models, got {len(names)}")
    if weights is not None and example_data is not None:
        raise ConfigError("give either weights or example_data, not both")
    if kind not in ("auto", "embedder", "reranker"):
        raise ConfigError(f"kind={kind!r} is not valid; choose 'auto', 'embedder' or 'reranker'")
    folders = [resolve_model_folder(name) for name in names]
    for folder in folders[1:]:
        check_same_architecture(folders[0], folder)
    # check every model's tensors (names and shapes only) before the slow parts; buffers the model
    # rebuilds on loading are neither compared nor averaged (the first model's, if saved, are kept)
    rebuilt = rebuilt_buffers(folders[0])
    reference_shapes = _without(tensor_shapes(folders[0]), rebuilt)
    for folder, name in zip(folders[1:], names[1:], strict=True):
        check_same_tensors(reference_shapes, _without(tensor_shapes(folder), rebuilt), names[0], name)

    losses: list[float] | None = None
    resolved_kind: str | None = None if kind == "auto" else kind
    if example_data is not None:
        examples = read_examples(os.fspath(example_data), max_examples)
        resolved_kind = detect_kind(folders[0]) if kind == "auto" else kind
        losses = example_losses(folders, examples, resolved_kind, negatives=negatives, **(model_kwargs or {}))  # type: ignore[arg-type]
        chosen = cocktail_weights(losses, temperature)
    elif weights is None:
        chosen = [1.0 / len(names)] * len(names)
    else:
        chosen = normalize_weights(weights, len(names))
    if resolved_kind is None:
        try:
            resolved_kind = detect_kind(folders[0])
        except ConfigError:
            resolved_kind = None

    reference = read_state_dict(folders[0])
    merged: dict[str, torch.Tensor] = {}
    accumulate_into(merged, _without(reference, rebuilt), chosen[0], names[0], names[0], first=True)
    for folder, name, weight in zip(folders[1:], names[1:], chosen[1:], strict=True):
        other = _without(read_state_dict(folder), rebuilt)
        accumulate_into(merged, other, weight, names[0], name, first=False)
    state = finish_merge(merged, reference)
    state.update({key: value.contiguous() for key, value in reference.items() if key in rebuilt})
    info = {
        "models": names,
        "weights": chosen,
        "losses": losses,
        "temperature": temperature,
        "kind": resolved_kind,
    }
    write_merged(os.fspath(output), state, folders[0], overwrite=overwrite, info=info)
    return chosen
