"""Settings saved beside a model's weights (``bgekit.json``) and their resolution order.

Order, highest first: explicit arguments, the folder's ``bgekit.json``, the folder's sentence-transformers
configuration (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``), then the table of published checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from bgekit.errors import ConfigError, DataFormatError
from bgekit.io import atomic_open
from bgekit.models import registry

SETTINGS_FILE = "bgekit.json"
FORMAT_VERSION = 1

Pooling = Literal["cls", "mean", "last_token"]
Kind = Literal["encoder", "decoder", "m3", "icl"]
Dtype = Literal["fp32", "fp16", "bf16", "auto"]
PaddingSide = Literal["left", "right"]

_POOLING_ALIASES = {
    "lasttoken": "last_token",
    "last": "last_token",
    "mean_tokens": "mean",
    "cls_token": "cls",
}
_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}


def normalize_pooling(value: str) -> str:
    """Map pooling aliases (``lasttoken``, ``last``) to bgekit's names and validate them."""
    value = _POOLING_ALIASES.get(value.lower(), value.lower())
    if value not in get_args(Pooling):
        raise ConfigError(f"pooling={value!r} is not valid; choose one of {list(get_args(Pooling))}")
    return value


def normalize_dtype(value: str) -> str:
    """Map dtype aliases (``float16``, ``bfloat16``) to ``fp32``/``fp16``/``bf16``/``auto`` and validate them."""
    value = _DTYPE_ALIASES.get(str(value).lower().replace("torch.", ""), str(value).lower())
    if value not in get_args(Dtype):
        raise ConfigError(f"dtype={value!r} is not valid; choose one of {list(get_args(Dtype))}")
    return value


@dataclass
class EmbedderSettings:
    """Everything needed, besides the weights, to turn text into the embeddings a model was trained for.

    Attributes:
        kind: the model family: ``encoder`` (BERT-like), ``decoder`` (LLM), ``m3`` (BGE-M3), ``icl``.
        pooling: ``cls``, ``mean`` or ``last_token``.
        normalize: L2-normalise the output vectors.
        query_instruction: text put before each query (``None`` for none).
        query_instruction_format: how instruction and query are joined, ``"{}{}"`` by default.
        passage_instruction / passage_instruction_format: the same for passages.
        query_max_length / passage_max_length: token limits (``None``: the model's own limit).
        truncate_dim: keep the first ``truncate_dim`` dimensions (Matryoshka), applied before normalising.
        padding_side: tokenizer padding side (``None``: the tokenizer's own).
        dtype: default compute dtype when the caller does not choose one.
        examples_for_task: few-shot examples for ICL embedders (dicts with instruct/query/response).
        colbert_dim: M3 only: keep the first ``colbert_dim`` dimensions of each ColBERT vector (``None``:
            the head's full size, read from ``colbert_linear.pt``).
        append_eos: decoders only: end every input with the EOS token when the tokenizer does not add it
            itself (the published usage of e5-mistral and its descendants).

    Example:
        >>> EmbedderSettings(pooling="mean").pooling
        'mean'
    """

    kind: Kind = "encoder"
    pooling: Pooling = "cls"
    normalize: bool = True
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    query_max_length: int | None = None
    passage_max_length: int | None = None
    truncate_dim: int | None = None
    padding_side: PaddingSide | None = None
    dtype: Dtype | None = None
    examples_for_task: list[dict[str, str]] | None = None
    colbert_dim: int | None = None
    append_eos: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pooling = normalize_pooling(self.pooling)  # type: ignore[assignment]
        if self.kind not in get_args(Kind):
            raise ConfigError(f"kind={self.kind!r} is not valid; choose one of {list(get_args(Kind))}")
        if self.dtype is not None:
            self.dtype = normalize_dtype(self.dtype)  # type: ignore[assignment]
        if self.padding_side not in (None, "left", "right"):
            raise ConfigError(f"padding_side={self.padding_side!r} is not valid; choose 'left' or 'right'")
        for name in ("query_max_length", "passage_max_length", "truncate_dim", "colbert_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name}={value!r} is not valid; expected a positive integer or None")
        for name in ("query_instruction_format", "passage_instruction_format"):
            fmt = getattr(self, name)
            if fmt.count("{}") != 2:
                raise ConfigError(
                    f"{name}={fmt!r} is not valid; it needs exactly two '{{}}' (instruction, then text)"
                )

        if not isinstance(self.append_eos, bool):
            raise ConfigError(f"append_eos={self.append_eos!r} is not valid; expected True or False")
        if self.examples_for_task is not None:
            self.examples_for_task = validate_examples(self.examples_for_task)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> EmbedderSettings:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        unknown = set(data) - set(cls.field_names())
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {sorted(unknown)}; valid settings: {cls.field_names()}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


EXAMPLE_KEYS = ("instruct", "query", "response")


def validate_examples(examples: Any) -> list[dict[str, str]]:
    """Check ICL few-shot examples: a list of dicts with string ``instruct``/``query``/``response`` keys.

    Example:
        >>> validate_examples([{"instruct": "Find it.", "query": "q", "response": "r"}])[0]["query"]
        'q'
    """
    if not isinstance(examples, list | tuple):
        raise ConfigError(
            f"examples_for_task must be a list of dicts with keys {list(EXAMPLE_KEYS)}, "
            f"got {type(examples).__name__}"
        )
    out: list[dict[str, str]] = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise ConfigError(f"examples_for_task[{i}] is {type(example).__name__}; expected a dict")
        unknown = sorted(set(example) - set(EXAMPLE_KEYS))
        if unknown:
            raise ConfigError(
                f"examples_for_task[{i}] has unknown key(s) {unknown}; valid: {list(EXAMPLE_KEYS)}"
            )
        for key, value in example.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"examples_for_task[{i}][{key!r}] is {type(value).__name__}; expected a string"
                )
        out.append(dict(example))
    return out


def read_json(path: str) -> Any:
    """Read a JSON file, naming the file and line when it is malformed."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"invalid JSON ({exc.msg}, column {exc.colno})", path, exc.lineno) from exc


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_saved_settings(folder: str, kind: str = "embedder") -> dict[str, Any]:
    """The settings stored in ``folder/bgekit.json`` for ``kind`` (``embedder``/``reranker``), or ``{}``."""
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        return {}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(kind, {}), dict):
        raise DataFormatError(f"expected an object with an {kind!r} object inside", path)
    return dict(data.get(kind, {}))


def write_saved_settings(folder: str, kind: str, settings: dict[str, Any]) -> None:
    """Write (or update) the ``kind`` section of ``folder/bgekit.json``."""
    path = os.path.join(folder, SETTINGS_FILE)
    data: dict[str, Any] = read_json(path) if os.path.isfile(path) else {}
    data["format_version"] = FORMAT_VERSION
    data[kind] = settings
    write_json_atomic(path, data)


def read_sentence_transformers_settings(folder: str) -> dict[str, Any]:
    """Pooling, normalisation, max length and prompts from a sentence-transformers layout, or ``{}``."""
    found: dict[str, Any] = {}
    modules_path = os.path.join(folder, "modules.json")
    if os.path.isfile(modules_path):
        modules = read_json(modules_path)
        types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
        found["normalize"] = any(t.endswith("Normalize") for t in types)
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_cfg = os.path.join(folder, module.get("path", ""), "config.json")
                if os.path.isfile(pooling_cfg):
                    cfg = read_json(pooling_cfg)
                    if cfg.get("pooling_mode_cls_token"):
                        found["pooling"] = "cls"
                    elif cfg.get("pooling_mode_mean_tokens"):
                        found["pooling"] = "mean"
                    elif cfg.get("pooling_mode_lasttoken"):
                        found["pooling"] = "last_token"
    sbert_path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(sbert_path):
        max_len = read_json(sbert_path).get("max_seq_length")
        if isinstance(max_len, int) and max_len > 0:
            found["query_max_length"] = max_len
            found["passage_max_length"] = max_len
    st_cfg = os.path.join(folder, "config_sentence_transformers.json")
    if os.path.isfile(st_cfg):
        prompts = read_json(st_cfg).get("prompts") or {}
        if prompts.get("query"):
            found["query_instruction"] = prompts["query"]
        for key in ("passage", "document"):
            if prompts.get(key):
                found["passage_instruction"] = prompts[key]
    return found


def resolve_embedder_settings(
    name_or_path: str, folder: str, explicit: dict[str, Any]
) -> tuple[EmbedderSettings, dict[str, str]]:
    """Merge the four sources of settings; return them and, per field, which source decided it.

    Args:
        name_or_path: what the user passed (a hub name is looked up in the published table).
        folder: the local model folder.
        explicit: arguments the caller gave (``None`` values mean "not given").

    Example:
        >>> s, origin = resolve_embedder_settings("BAAI/bge-small-en-v1.5", "/nonexistent", {})
        >>> s.pooling, origin["pooling"]
        ('cls', 'published-table')
    """
    layers = [
        ("published-table", registry.lookup(name_or_path)),
        ("sentence-transformers", read_sentence_transformers_settings(folder)),
        (SETTINGS_FILE, read_saved_settings(folder, "embedder")),
        ("argument", {k: v for k, v in explicit.items() if v is not None}),
    ]
    merged, origin = merge_setting_layers(layers, EmbedderSettings.field_names())
    return EmbedderSettings.from_dict(merged, source=folder), origin


def merge_setting_layers(
    layers: list[tuple[str, dict[str, Any]]], names: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """Later layers override earlier ones: (merged settings, the source of each); an unknown key is a
    ConfigError naming its source."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    valid = set(names)
    for source, layer in layers:
        for key, value in layer.items():
            if key not in valid:
                raise ConfigError(f"{source}: unknown setting {key!r}; valid settings: {sorted(valid)}")
            merged[key] = value
            origin[key] = source
    return merged, origin
