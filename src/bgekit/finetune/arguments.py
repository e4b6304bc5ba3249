"""Command-line arguments of embedder fine-tuning: dataclasses parsed by ``HfArgumentParser``.

The names follow FlagEmbedding's ``finetune.embedder`` runner so existing scripts keep working; any
``transformers.TrainingArguments`` option (``--learning_rate``, ``--bf16``, ``--save_steps``,
``--resume_from_checkpoint``, ``--deepspeed``...) is accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from bgekit.errors import ConfigError


@dataclass
class ModelArguments:
    """Which model to train, and the settings to override.

    Pooling and normalisation default to the model's own settings (``bgekit.json``, then its
    sentence-transformers configuration, then the table of published checkpoints), so a model is
    trained the way it is used; give ``--sentence_pooling_method`` only to change it.
    """

    model_name_or_path: str = field(metadata={"help": "hub name or local folder of the model to fine-tune"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "hub cache folder"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with the checkpoint"})
    sentence_pooling_method: str | None = field(
        default=None,
        metadata={"help": "cls, mean or last_token (default: the model's own pooling)"},
    )
    normalize_embeddings: bool | None = field(
        default=None, metadata={"help": "L2-normalise embeddings (default: the model's own setting)"}
    )
    use_lora: bool = field(
        default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"}
    )
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"],
        metadata={"help": "module names LoRA adapts", "nargs": "+"},
    )
    save_merged_lora_model: bool = field(
        default=True,
        metadata={"help": "save the adapter merged into the weights (loadable as a plain model)"},
    )

    def __post_init__(self) -> None:
        if self.use_lora and (
            self.lora_rank < 1 or not 0 <= self.lora_dropout < 1 or not self.target_modules
        ):
            raise ConfigError(
                "--use_lora needs --lora_rank >= 1, 0 <= --lora_dropout < 1 and --target_modules"
            )


@dataclass
class DataArguments:
    """Training data (FlagEmbedding JSONL) and how groups are built from it."""

    train_data: list[str] = field(
        default_factory=list,
        metadata={"help": "JSONL files or folders with query/pos/neg lines", "nargs": "+"},
    )
    train_group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + negatives"})
    query_max_len: int = field(default=32, metadata={"help": "query token limit"})
    passage_max_len: int = field(default=128, metadata={"help": "passage token limit"})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "pad lengths to a multiple of this"}
    )
    max_example_num_per_dataset: int | None = field(default=None, metadata={"help": "subsample each dataset"})
    query_instruction_for_retrieval: str | None = field(default=None, metadata={"help": "query instruction"})
    query_instruction_format: str = field(default="{}{}", metadata={"help": "how instruction and query join"})
    passage_instruction_for_retrieval: str | None = field(
        default=None, metadata={"help": "passage instruction"}
    )
    passage_instruction_format: str = field(
        default="{}{}", metadata={"help": "how instruction and passage join"}
    )
    knowledge_distillation: bool = field(
        default=False, metadata={"help": "distil from the lines' pos_scores/neg_scores (teacher scores)"}
    )
    shuffle_ratio: float = field(
        default=0.0, metadata={"help": "probability of shuffling a positive's thirds"}
    )
    same_dataset_within_batch: bool = field(
        default=False, metadata={"help": "every batch from one dataset (needed for per-dataset group sizes)"}
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/) to evaluate on"},
    )
    eval_split: str = field(default="dev", metadata={"help": "qrels split of --eval_dataset"})
    eval_max_corpus: int | None = field(
        default=None, metadata={"help": "keep only this many corpus documents"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if self.train_group_size < 1:
            raise ConfigError(f"--train_group_size {self.train_group_size} must be at least 1")
        for name in ("query_max_len", "passage_max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)} must be positive")
        for name in ("query_instruction_format", "passage_instruction_format"):
            if getattr(self, name).count("{}") != 2:
                raise ConfigError(
                    f"--{name} {getattr(self, name)!r} needs exactly two '{{}}' (instruction, text)"
                )


@dataclass
class EmbedderTrainingArguments(TrainingArguments):
    """HF ``TrainingArguments`` plus the contrastive-training options.

    Defaults that differ from ``TrainingArguments``: ``remove_unused_columns=False`` (batches are
    built by bgekit's collator) and ``dataloader_drop_last=True`` with cross-device negatives.
    """

    temperature: float = field(default=0.02, metadata={"help": "softmax temperature of the scores"})
    negatives_cross_device: bool = field(default=False, metadata={"help": "share negatives across processes"})
    kd_loss_type: Literal["kl_div", "m3_kd_loss"] = field(
        default="kl_div", metadata={"help": "distillation loss: kl_div or m3_kd_loss"}
    )
    use_mrl: bool = field(default=False, metadata={"help": "Matryoshka representation learning"})
    mrl_dims: list[int] = field(
        default_factory=list, metadata={"help": "Matryoshka dimensions", "nargs": "+"}
    )
    grad_cache: bool = field(
        default=False, metadata={"help": "GradCache: large contrastive batches in chunks"}
    )
    gc_chunk_size: int = field(default=32, metadata={"help": "texts per forward pass with --grad_cache"})
    fix_position_embedding: bool = field(default=False, metadata={"help": "freeze position embeddings"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: bgekit builds batches"})
    unified_finetuning: bool = field(
        default=False,
        metadata={"help": "BGE-M3: train dense, sparse and ColBERT together (adds heads if missing)"},
    )
    use_self_distill: bool = field(
        default=False, metadata={"help": "BGE-M3: distil the ensemble into each head"}
    )
    self_distill_start_step: int = field(default=-1, metadata={"help": "BGE-M3: self-distil after this step"})
    fix_encoder: bool = field(
        default=False, metadata={"help": "BGE-M3: train the heads only, backbone frozen"}
    )
    colbert_dim: int = field(
        default=-1, metadata={"help": "BGE-M3: size of new ColBERT vectors (-1: hidden size)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"--temperature {self.temperature} must be positive")
        if self.use_mrl and not self.mrl_dims:
            raise ConfigError("--use_mrl needs --mrl_dims, e.g. --mrl_dims 64 128 384")
        if self.grad_cache and self.gc_chunk_size < 1:
            raise ConfigError(f"--gc_chunk_size {self.gc_chunk_size} must be positive")
        if self.grad_cache and self.deepspeed:
            raise ConfigError("--grad_cache does not work with --deepspeed; use one or the other")
        if self.unified_finetuning and (self.negatives_cross_device or self.grad_cache):
            raise ConfigError(
                "--unified_finetuning works without --negatives_cross_device and --grad_cache for now"
            )
        if (self.use_self_distill or self.fix_encoder) and not self.unified_finetuning:
            raise ConfigError("--use_self_distill and --fix_encoder need --unified_finetuning")
        if self.negatives_cross_device:
            # every process must hold the same number of queries for all_gather
            self.dataloader_drop_last = True
