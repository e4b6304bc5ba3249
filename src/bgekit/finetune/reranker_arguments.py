"""Reranker fine-tuning arguments: the model, the data and ``TrainingArguments`` (as ``arguments.py`` for
embedders), parsed from the command line by ``bgekit.finetune.entry``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from bgekit.errors import ConfigError
from bgekit.finetune.arguments import DataArguments

TrainKind = Literal["auto", "cross-encoder", "llm", "layerwise"]
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class RerankerModelArguments:
    """Which model to train, and how (cross-encoder, LLM with LoRA, layer-wise)."""

    model_name_or_path: str = field(metadata={"help": "hub name or local folder of the model to fine-tune"})
    model_type: TrainKind = field(
        default="auto",
        metadata={"help": "cross-encoder, llm or layerwise (auto: from the checkpoint's architecture)"},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "hub cache folder"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with the checkpoint"})
    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters (LLM rerankers)"})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "LoRA target modules", "nargs": "+"},
    )
    save_merged_lora_model: bool = field(
        default=False, metadata={"help": "also save base+LoRA merged into OUTPUT_DIR/merged_model"}
    )
    prompt: str | None = field(default=None, metadata={"help": "LLM reranker prompt (default: BGE's)"})
    cutoff_layers: list[int] = field(
        default_factory=list,
        metadata={"help": "layer-wise: layers that get a loss (default: the last)", "nargs": "+"},
    )
    layerwise_distill_from_last: bool = field(
        default=True, metadata={"help": "layer-wise: shallower layers also learn the deepest layer's ranking"}
    )

    def __post_init__(self) -> None:
        if self.model_type not in ("auto", "cross-encoder", "llm", "layerwise"):
            raise ConfigError(
                f"--model_type {self.model_type!r} is not valid; choose auto, cross-encoder, llm, layerwise"
            )
        if self.lora_rank < 1:
            raise ConfigError(f"--lora_rank {self.lora_rank} must be positive")


@dataclass
class RerankerDataArguments(DataArguments):
    """Training data (FlagEmbedding JSONL) and how pairs are built.

    Rows may carry ``prompt`` (the LLM reranker's question), ``query_prompt`` and ``passage_prompt``
    (instructions put before that row's query and passages).
    """

    query_instruction_for_rerank: str | None = field(default=None, metadata={"help": "query instruction"})
    passage_instruction_for_rerank: str | None = field(default=None, metadata={"help": "passage instruction"})
    max_len: int | None = field(
        default=None,
        metadata={
            "help": "token limit of a pair (default: query_max_len + passage_max_len + special tokens)"
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "held-out JSONL groups: each query's positives ranked among its negatives"},
    )


@dataclass
class RerankerTrainingArguments(TrainingArguments):
    """HF ``TrainingArguments`` plus the reranker options; ``remove_unused_columns`` is kept False."""

    kd_weight: float = field(default=1.0, metadata={"help": "weight of the distillation term"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: bgekit builds batches"})
