"""Reranker settings (the ``reranker`` section of ``bgekit.json``) and their resolution order.

Order, highest first: explicit arguments, the folder's ``bgekit.json``, the table of published rerankers
(``models/reranker_registry.py``), then defaults for the kind of model (FlagEmbedding's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bgekit.errors import ConfigError
from bgekit.models import reranker_registry
from bgekit.models.settings import SETTINGS_FILE, normalize_dtype, read_saved_settings

RerankerKind = Literal["cross-encoder", "llm", "layerwise", "lightweight"]

DEFAULT_MAX_LENGTH = 512
"""FlagEmbedding's default ``max_length`` for every reranker class."""

DEFAULT_DTYPE = "fp32"
"""The dtype every kind of reranker runs in when neither the caller nor the checkpoint names one."""

LLM_KINDS = ("llm", "layerwise", "lightweight")


@dataclass
class RerankerSettings:
    """Everything besides the weights that decides a reranker's scores.

    Attributes:
        kind: ``cross-encoder`` (``AutoModelForSequenceClassification``, the logit is the score), ``llm``
            (a decoder; the score is the logit of "Yes" after a prompt), ``layerwise`` (the same from
            intermediate layers, ``cutoff_layers``) or ``lightweight`` (the checkpoint's own code with
            token compression). ``None`` while unresolved: detected from the model's architecture.
        normalize: apply a sigmoid to the scores.
        query_instruction / query_instruction_format: text put before each query, and how (``"{}{}"``).
            LLM rerankers default to ``"A: "`` as FlagEmbedding.
        passage_instruction / passage_instruction_format: the same for passages (LLM default ``"B: "``).
        max_length: token limit of a pair (the passage is truncated to fit).
        query_max_length: token limit of the query alone; default 3/4 of ``max_length``.
        prompt: the LLM reranker's question after the pair (``None``: the checkpoint's default).
        cutoff_layers: layers whose outputs are scored (layer-wise and lightweight rerankers).
        compress_layers / compress_ratio: the lightweight reranker's token compression.
        dtype: default compute dtype when the caller does not choose one.

    Example:
        >>> RerankerSettings(kind="cross-encoder", normalize=True).normalize
        True
    """

    kind: RerankerKind | None = None
    normalize: bool = False
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    max_length: int | None = None
    query_max_length: int | None = None
    prompt: str | None = None
    cutoff_layers: list[int] | None = None
    compress_layers: list[int] | None = None
    compress_ratio: int | None = None
    dtype: Literal["fp32", "fp16", "bf16", "auto"] | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in get_args(RerankerKind):
            raise ConfigError(
                f"kind={self.kind!r} is not valid; choose one of {list(get_args(RerankerKind))}"
            )
        if self.dtype is not None:
            self.dtype = normalize_dtype(self.dtype)  # type: ignore[assignment]
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"normalize={self.normalize!r} is not valid; expected True or False")
        for name in ("max_length", "query_max_length", "compress_ratio"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name}={value!r} is not valid; expected a positive integer or None")
        for name in ("cutoff_layers", "compress_layers"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
                setattr(self, name, value)
            if value is not None and (
                not isinstance(value, list | tuple)
                or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                raise ConfigError(
                    f"{name}={value!r} is not valid; expected a non-empty list of layer numbers"
                )
            if value is not None:
                setattr(self, name, [int(v) for v in value])
        for name in ("query_instruction_format", "passage_instruction_format"):
            fmt = getattr(self, name)
            if not isinstance(fmt, str) or fmt.count("{}") != 2:
                raise ConfigError(
                    f"{name}={fmt!r} is not valid; it needs exactly two '{{}}' (instruction, then text)"
                )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def detect_kind(config: Any) -> RerankerKind:
    """``cross-encoder`` for a sequence-classification checkpoint, ``llm`` for a causal LM.

    Example:
        >>> from types import SimpleNamespace
        >>> detect_kind(SimpleNamespace(architectures=["XLMRobertaForSequenceClassification"]))
        'cross-encoder'
    """
    architectures = [str(a) for a in (getattr(config, "architectures", None) or [])]
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "llm"
    if getattr(config, "is_decoder", False) or getattr(config, "model_type", "") in (
        "llama",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "mistral",
        "minicpm",
    ):
        return "llm"
    return "cross-encoder"


def with_layers(kind: RerankerKind, cutoff_layers: Any) -> RerankerKind:
    """An LLM reranker scored (or trained) at chosen layers is a layer-wise one.

    Example:
        >>> with_layers("llm", [8]), with_layers("llm", None), with_layers("cross-encoder", [8])
        ('layerwise', 'llm', 'cross-encoder')
    """
    return "layerwise" if kind == "llm" and cutoff_layers else kind


def resolve_reranker_settings(
    name_or_path: str, folder: str, explicit: dict[str, Any], config: Any
) -> tuple[RerankerSettings, dict[str, str]]:
    """Merge the sources of settings; return them and, per field, which source decided it.

    Args:
        name_or_path: what the user passed (a hub name is looked up in the published table).
        folder: the local model folder (its ``bgekit.json`` is read).
        explicit: arguments the caller gave (``None`` values mean "not given").
        config: the model's ``transformers`` config, to detect the kind when nothing says it.
    """
    layers = [
        ("published-table", reranker_registry.lookup(name_or_path)),
        (SETTINGS_FILE, read_saved_settings(folder, "reranker")),
        ("argument", {k: v for k, v in explicit.items() if v is not None}),
    ]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    valid = set(RerankerSettings.field_names())
    for source, layer in layers:
        for key, value in layer.items():
            if key not in valid:
                raise ConfigError(
                    f"{source}: unknown reranker setting {key!r}; valid settings: {sorted(valid)}"
                )
            merged[key] = value
            origin[key] = source
    if merged.get("kind") is None:
        merged["kind"] = detect_kind(config)
        origin["kind"] = "model-config"
    merged["kind"] = with_layers(merged["kind"], merged.get("cutoff_layers"))
    if merged["kind"] in LLM_KINDS:
        # FlagEmbedding's LLM rerankers put "A: " / "B: " before query and passage
        for key, default in (("query_instruction", "A: "), ("passage_instruction", "B: ")):
            if key not in merged:
                merged[key] = default
                origin[key] = "default"
    if merged.get("max_length") is None:
        merged["max_length"] = DEFAULT_MAX_LENGTH
        origin["max_length"] = "default"
    settings = RerankerSettings(**merged)
    return settings, origin
