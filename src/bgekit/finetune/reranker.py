"""Reranker fine-tuning entry point: ``python -m bgekit.finetune.reranker`` or ``torchrun -m ...``.

Trains cross-encoders (any encoder; a plain BERT/XLM-R body gets a fresh one-logit head), LLM rerankers
(the "Yes" logit after the BGE prompt, LoRA through ``peft``) and layer-wise rerankers (a loss at each
chosen layer), on the same JSONL as embedder training::

    torchrun --nproc_per_node 2 -m bgekit.finetune.reranker --model_name_or_path PATH \\
        --train_data train_hn.jsonl --output_dir out/ --train_group_size 8 \\
        --query_max_len 64 --passage_max_len 448 [--knowledge_distillation] ...   # any TrainingArguments

Pairs are built by the inference code (``bgekit.inference.rerank_inputs``: instructions, truncation,
special tokens, prompt) and scored by the inference heads (``bgekit.inference.rerank_heads``), so a
trained model scores at inference exactly as it was trained. The output folder's ``bgekit.json`` holds
the ``reranker`` settings (kind, lengths, instructions, prompt, cutoff layers), and ``Reranker(out)``
loads it as is.

The "Yes" token: FlagEmbedding's training takes the *last* piece of ``tokenizer("Yes")`` and its
inference the *first*; bgekit takes the last in both (``yes_token_id``), as ``bgekit.Reranker`` does.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import TrainingArguments

from bgekit.errors import ConfigError
from bgekit.finetune.arguments import DataArguments
from bgekit.finetune.data import Group, GroupDataset, SamplingOptions, load_sources
from bgekit.finetune.reranker_losses import group_scores, layerwise_loss, reranker_loss
from bgekit.finetune.trainer import GroupTrainer
from bgekit.inference.inputs import apply_instruction
from bgekit.inference.rerank_heads import cross_encoder_scores, layerwise_generic_scores, llm_scores
from bgekit.inference.rerank_inputs import CrossEncoderInputs, PromptInputs
from bgekit.models import reranker_registry

logger = logging.getLogger(__name__)

TrainKind = Literal["auto", "cross-encoder", "llm", "layerwise"]
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def yes_token_id(tokenizer: Any) -> int:
    """The id whose logit is an LLM reranker's score: the last piece of ``tokenizer("Yes")``.

    The same rule as ``bgekit.Reranker`` (and FlagEmbedding's training); see the module docstring.

    Example:
        >>> yes_token_id(tokenizer)   # doctest: +SKIP
        3553
    """
    pieces = tokenizer("Yes", add_special_tokens=False)["input_ids"]
    if not pieces:
        raise ConfigError("the tokenizer turns 'Yes' into no tokens; it cannot train an LLM reranker")
    return int(pieces[-1])


# ------------------------------------------------------------------------------------------ arguments
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


# ------------------------------------------------------------------------------------------------ data
@dataclass
class PairGroup:
    """A sampled group with its row's own prompt and instructions (``None``: the run's defaults)."""

    group: Group
    prompt: str | None = None
    query_instruction: str | None = None
    passage_instruction: str | None = None


class PairGroupDataset(GroupDataset):
    """:class:`~bgekit.finetune.data.GroupDataset` whose items keep their row's reranker prompts.

    A row's ``prompt`` is the LLM reranker's question for rerankers, not a query instruction as for
    embedders, so rows are read with it set aside and it travels with the group.
    """

    def __init__(self, sources: Any, options: SamplingOptions) -> None:
        for source in sources:
            for row in source.rows:
                if "prompt" in row:
                    row["rerank_prompt"] = row.pop("prompt")
        super().__init__(sources, options)

    def __getitem__(self, index: int) -> PairGroup:  # type: ignore[override]
        _, row = self.locate(index)
        return PairGroup(
            super().__getitem__(index),
            prompt=row.get("rerank_prompt"),
            query_instruction=row.get("query_prompt"),
            passage_instruction=row.get("passage_prompt"),
        )


@dataclass
class PairSettings:
    """How pairs become tokens: the ``reranker`` settings saved to ``bgekit.json``.

    Example:
        >>> PairSettings(kind="cross-encoder", max_length=160, query_max_length=32).to_saved()["kind"]
        'cross-encoder'
    """

    kind: Literal["cross-encoder", "llm", "layerwise"]
    max_length: int
    query_max_length: int
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    prompt: str | None = None
    cutoff_layers: list[int] | None = None

    def to_saved(self) -> dict[str, Any]:
        saved: dict[str, Any] = {
            "kind": self.kind,
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "query_instruction": self.query_instruction,
            "query_instruction_format": self.query_instruction_format,
            "passage_instruction": self.passage_instruction,
            "passage_instruction_format": self.passage_instruction_format,
        }
        if self.kind != "cross-encoder":
            saved["prompt"] = self.prompt
        if self.kind == "layerwise":
            saved["cutoff_layers"] = self.cutoff_layers
        return saved


class PairCollator:
    """Turn :class:`PairGroup` items into one right-padded batch of pairs, built as inference builds them.

    Returns ``{"pairs": {input_ids, attention_mask[, token_type_ids]}, "group_size": G,
    "teacher_scores": (B, G) tensor or None}``; pairs are ordered group by group, the positive first.
    """

    def __init__(self, tokenizer: Any, settings: PairSettings, *, original_pad_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.pad_id = int(tokenizer.pad_token_id)
        if settings.kind == "cross-encoder":
            self.cross: CrossEncoderInputs | None = CrossEncoderInputs(tokenizer)
            self.cross.check_lengths(settings.max_length, settings.query_max_length)
            self.prompt_inputs: PromptInputs | None = None
        else:
            self.cross = None
            self.prompt_inputs = PromptInputs(
                tokenizer, always_bos=settings.kind != "llm", original_pad_id=original_pad_id
            )
            self.prompt_inputs.check_lengths(settings.max_length, settings.query_max_length)

    def features(self, item: PairGroup) -> list[dict[str, list[int]]]:
        s = self.settings
        q_inst = item.query_instruction if item.query_instruction is not None else s.query_instruction
        p_inst = item.passage_instruction if item.passage_instruction is not None else s.passage_instruction
        (query,) = apply_instruction([item.group.query], q_inst, s.query_instruction_format)
        passages = apply_instruction(item.group.passages, p_inst, s.passage_instruction_format)
        pairs = [(query, passage) for passage in passages]
        if self.cross is not None:
            return self.cross.features(pairs, s.max_length, s.query_max_length)
        assert self.prompt_inputs is not None
        prompt = item.prompt or s.prompt or reranker_registry.LLM_PROMPT
        features, _, _ = self.prompt_inputs.features(pairs, s.max_length, s.query_max_length, prompt)
        return features

    def __call__(self, items: list[PairGroup]) -> dict[str, Any]:
        from bgekit.engine import pad_sequences

        sizes = {len(item.group.passages) for item in items}
        if len(sizes) != 1:
            raise ConfigError(
                f"groups of different sizes {sorted(sizes)} in one batch; use same_dataset_within_batch "
                "when datasets set their own train_group_size"
            )
        features = [f for item in items for f in self.features(item)]
        teacher = None
        if items[0].group.teacher_scores is not None:
            teacher = torch.tensor([item.group.teacher_scores for item in items], dtype=torch.float32)
        return {
            "pairs": pad_sequences(features, self.pad_id, padding_side="right"),
            "group_size": sizes.pop(),
            "teacher_scores": teacher,
        }


# --------------------------------------------------------------------------------------------- trainer
class RerankerTrainer(GroupTrainer):
    """Trains a cross-encoder, LLM or layer-wise reranker on grouped pairs.

    Args:
        kind: ``cross-encoder``, ``llm`` or ``layerwise``.
        yes_id: the "Yes" token id (LLM and layer-wise kinds).
        cutoff_layers: layer-wise: the layers that get a loss.
        distill_from_last: layer-wise: distil shallower layers from the deepest one.
        *args, **kwargs: as :class:`~bgekit.finetune.trainer.GroupTrainer`.

    Example:
        >>> trainer = RerankerTrainer(model=model, args=args, train_dataset=ds, data_collator=collate,
        ...                           kind="cross-encoder")   # doctest: +SKIP
    """

    def __init__(
        self,
        *args: Any,
        kind: str = "cross-encoder",
        yes_id: int | None = None,
        cutoff_layers: list[int] | None = None,
        distill_from_last: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("settings_kind", "reranker")
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.yes_id = yes_id
        self.cutoff_layers = cutoff_layers
        self.distill_from_last = distill_from_last
        # our loss is a mean over queries; tell the Trainer to scale it for gradient accumulation itself
        self.model_accepts_loss_kwargs = False

    def pair_scores(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every pair: (N,) or, layer-wise, (N, layers)."""
        if self.kind == "cross-encoder":
            return cross_encoder_scores(model, batch)
        assert self.yes_id is not None
        if self.kind == "llm":
            return llm_scores(model, batch, self.yes_id)
        # the generic layer-wise heads need the model itself (hooks on its layers), not a DDP wrapper
        inner = self.accelerator.unwrap_model(model)
        return layerwise_generic_scores(inner, batch, self.yes_id, list(self.cutoff_layers or []))

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        group_size = int(inputs["group_size"])
        teacher = inputs.get("teacher_scores")
        scores = self.pair_scores(model, inputs["pairs"])
        if scores.dim() == 2:
            layers = [group_scores(scores[:, k], group_size) for k in range(scores.shape[1])]
            teacher_grouped = None if teacher is None else teacher.to(scores.device)
            loss = layerwise_loss(layers, teacher_grouped, distill_from_last=self.distill_from_last)
        else:
            grouped = group_scores(scores, group_size)
            loss = reranker_loss(
                grouped,
                None if teacher is None else teacher.to(grouped.device),
                kd_weight=getattr(self.args, "kd_weight", 1.0),
            )
        return (loss, {"scores": scores}) if return_outputs else loss

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        scores = outputs["scores"]
        if scores.dim() == 2:  # layer-wise: rank with the deepest layer
            scores = scores[:, -1]
        grouped = group_scores(scores.float(), int(inputs["group_size"]))
        labels = torch.zeros(grouped.shape[0], dtype=torch.long, device=grouped.device)  # positive first
        return loss.detach(), grouped.detach(), labels


def group_ranking_metrics(prediction: Any) -> dict[str, float]:
    """Held-out groups: MRR of the positive among its own negatives, and how often it ranks first.

    ``prediction.predictions`` holds (queries, group) scores with the positive in column 0.

    Example:
        >>> from types import SimpleNamespace
        >>> group_ranking_metrics(SimpleNamespace(predictions=[[2.0, 1.0], [0.0, 3.0]]))
        {'mrr': 0.75, 'top1': 0.5}
    """
    import numpy as np

    scores = np.asarray(prediction.predictions, dtype=np.float64)
    rank = 1 + (scores[:, 1:] > scores[:, :1]).sum(axis=1)  # ties count in the positive's favour
    return {"mrr": float((1.0 / rank).mean()), "top1": float((rank == 1).mean())}


# ------------------------------------------------------------------------------------------------ build
def resolve_kind(
    model_args: RerankerModelArguments, config: Any
) -> Literal["cross-encoder", "llm", "layerwise"]:
    """The kind to train: as asked, else from the architecture (a causal LM is ``llm``, or ``layerwise``
    with ``--cutoff_layers``; anything else is a cross-encoder)."""
    from bgekit.inference.reranker_settings import detect_kind

    if model_args.model_type != "auto":
        return model_args.model_type
    detected = detect_kind(config)
    if detected == "llm":
        return "layerwise" if model_args.cutoff_layers else "llm"
    return "cross-encoder"


def load_model(
    folder: str, kind: str, model_args: RerankerModelArguments, training_args: TrainingArguments
) -> Any:
    """The ``transformers`` model to train: a one-logit sequence classifier, or a causal LM (with LoRA)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from bgekit.errors import ModelLoadError

    trust = model_args.trust_remote_code
    try:
        if kind == "cross-encoder":
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
            labels = getattr(config, "num_labels", 1)
            is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
            if is_classifier and labels != 1:
                raise ConfigError(
                    f"{folder!r} is a classifier with num_labels={labels}; a cross-encoder reranker has one output. "
                    "Start from its encoder body or a one-label checkpoint"
                )
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, config=config, trust_remote_code=trust
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust)
    except OSError as exc:
        raise ModelLoadError(f"could not load model weights from {folder!r}: {exc}") from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False
    if model_args.use_lora:
        if kind == "cross-encoder":
            raise ConfigError("--use_lora is for LLM rerankers; cross-encoders are trained fully")
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigError("--use_lora needs the peft package: pip install 'bgekit[train]'") from exc
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in model_args.target_modules if t in present]
        if not targets:
            raise ConfigError(
                f"--target_modules {model_args.target_modules} matches no module of {type(model).__name__}; "
                f"its linear layers include {sorted(n for n in present if 'proj' in n)[:12]}"
            )
        lora = LoraConfig(
            r=model_args.lora_rank,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if training_args.gradient_checkpointing:
            model.enable_input_require_grads()
    model.train()
    return model


def build_trainer(
    model_args: RerankerModelArguments,
    data_args: RerankerDataArguments,
    training_args: RerankerTrainingArguments,
) -> RerankerTrainer:
    """Load model, tokenizer and data, and return a ready :class:`RerankerTrainer`.

    Example:
        >>> trainer = build_trainer(RerankerModelArguments("model/"), RerankerDataArguments(["t.jsonl"]),
        ...                         RerankerTrainingArguments("out"))   # doctest: +SKIP
    """
    from transformers import AutoConfig, set_seed

    from bgekit.models.loading import load_tokenizer, resolve_model_folder

    # a fresh head (a BERT body's classifier) must start the same in every process and every run
    set_seed(training_args.seed)
    if not data_args.train_data:
        raise ConfigError("--train_data is required: one or more JSONL files or folders")
    if data_args.eval_dataset:
        raise ConfigError(
            "--eval_dataset (BEIR folder) is for embedders; for rerankers give --eval_data groups.jsonl"
        )
    folder = resolve_model_folder(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=model_args.trust_remote_code)
    kind = resolve_kind(model_args, config)
    tokenizer = load_tokenizer(
        model_args.tokenizer_name or folder, trust_remote_code=model_args.trust_remote_code
    )
    original_pad_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"

    settings = pair_settings(kind, model_args, data_args, tokenizer, config)
    model = load_model(folder, kind, model_args, training_args)
    seed = training_args.data_seed or training_args.seed

    def dataset_of(paths: list[str]) -> PairGroupDataset:
        sources = load_sources(
            paths,
            knowledge_distillation=data_args.knowledge_distillation,
            train_group_size=data_args.train_group_size,
            max_examples_per_dataset=data_args.max_example_num_per_dataset,
            seed=seed,
        )
        return PairGroupDataset(
            sources,
            SamplingOptions(
                train_group_size=data_args.train_group_size,
                knowledge_distillation=data_args.knowledge_distillation,
                shuffle_ratio=data_args.shuffle_ratio,
                seed=seed,
            ),
        )

    dataset = dataset_of(data_args.train_data)
    if (
        not data_args.same_dataset_within_batch
        and len({dataset.group_size_of(i) for i in range(len(dataset.sources))}) > 1
    ):
        raise ConfigError(
            "the training datasets set different group sizes (a 'type' or 'train_group_size' field); "
            "add --same_dataset_within_batch so each batch comes from one dataset"
        )
    eval_dataset = dataset_of([data_args.eval_data]) if data_args.eval_data else None
    return RerankerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        compute_metrics=group_ranking_metrics if eval_dataset is not None else None,
        data_collator=PairCollator(tokenizer, settings, original_pad_id=original_pad_id),
        processing_class=tokenizer,
        saved_settings=settings.to_saved(),
        same_dataset_within_batch=data_args.same_dataset_within_batch,
        kind=kind,
        yes_id=None if kind == "cross-encoder" else yes_token_id(tokenizer),
        cutoff_layers=settings.cutoff_layers,
        distill_from_last=model_args.layerwise_distill_from_last,
    )


def pair_settings(
    kind: str,
    model_args: RerankerModelArguments,
    data_args: RerankerDataArguments,
    tokenizer: Any,
    config: Any,
) -> PairSettings:
    """The pair-building settings for training, which are saved for inference."""
    query_instruction = data_args.query_instruction_for_rerank or data_args.query_instruction_for_retrieval
    passage_instruction = (
        data_args.passage_instruction_for_rerank or data_args.passage_instruction_for_retrieval
    )
    cutoff: list[int] | None = None
    if kind == "cross-encoder":
        special = CrossEncoderInputs(tokenizer).n_special
        max_length = data_args.max_len or data_args.query_max_len + data_args.passage_max_len + special
    else:
        # FlagEmbedding's LLM rerankers put "A: " / "B: " before query and passage
        query_instruction = "A: " if query_instruction is None else query_instruction
        passage_instruction = "B: " if passage_instruction is None else passage_instruction
        max_length = data_args.max_len or data_args.query_max_len + data_args.passage_max_len
        if kind == "layerwise":
            n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
            cutoff = list(model_args.cutoff_layers) or [n_layers]
            bad = [k for k in cutoff if not 1 <= k <= n_layers]
            if bad:
                raise ConfigError(f"--cutoff_layers {bad} outside the model's layers; valid: 1..{n_layers}")
    if data_args.query_max_len >= max_length:
        raise ConfigError(
            f"--query_max_len {data_args.query_max_len} leaves no room for the passage in --max_len {max_length}"
        )
    return PairSettings(
        kind=kind,  # type: ignore[arg-type]
        max_length=max_length,
        query_max_length=data_args.query_max_len,
        query_instruction=query_instruction,
        query_instruction_format=data_args.query_instruction_format,
        passage_instruction=passage_instruction,
        passage_instruction_format=data_args.passage_instruction_format,
        prompt=None if kind == "cross-encoder" else (model_args.prompt or reranker_registry.LLM_PROMPT),
        cutoff_layers=cutoff,
    )


def save_final(
    trainer: RerankerTrainer, model_args: RerankerModelArguments, output_dir: str | None = None
) -> None:
    """Save the trained model to ``output_dir``; with LoRA and ``--save_merged_lora_model`` also the merged
    model to ``output_dir/merged_model`` (loadable with ``Reranker`` without peft). ``output_dir``
    defaults to the run's (the final save writes into a staging folder)."""
    output_dir = str(trainer.args.output_dir) if output_dir is None else output_dir
    trainer.save_model(output_dir)
    if not (model_args.use_lora and model_args.save_merged_lora_model):
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        from bgekit.models.settings import write_saved_settings

        merged_dir = os.path.join(output_dir, "merged_model")
        model = trainer.accelerator.unwrap_model(trainer.model)
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir, safe_serialization=True)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(merged_dir)
        write_saved_settings(merged_dir, "reranker", trainer.saved_settings)


def train(
    model_args: RerankerModelArguments,
    data_args: RerankerDataArguments,
    training_args: RerankerTrainingArguments,
) -> RerankerTrainer:
    """Fine-tune and save to ``training_args.output_dir`` (loadable with ``bgekit.Reranker``).

    Resumes from ``training_args.resume_from_checkpoint`` when given (a folder, or ``"last"``/``"true"`` for
    the last complete checkpoint in ``output_dir``); a non-empty ``output_dir`` is refused otherwise, unless
    ``overwrite_output_dir``. The final model is staged and renamed into place (``bgekit.finetune.output``).

    Example:
        >>> train(RerankerModelArguments("model/"), RerankerDataArguments(["t.jsonl"]),
        ...       RerankerTrainingArguments("out", num_train_epochs=1))   # doctest: +SKIP
    """
    from bgekit.finetune.output import prepare_output_dir, save_staged

    resume = prepare_output_dir(training_args)
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.train(resume_from_checkpoint=resume)

    def write_final(folder: str) -> None:
        save_final(trainer, model_args, folder)
        if trainer.is_world_process_zero():
            trainer.state.save_to_json(os.path.join(folder, "trainer_state.json"))

    save_staged(trainer, write_final)
    return trainer


def parse_args(
    argv: list[str] | None = None,
) -> tuple[RerankerModelArguments, RerankerDataArguments, RerankerTrainingArguments]:
    """Parse command-line arguments (ours plus every ``TrainingArguments`` option)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((RerankerModelArguments, RerankerDataArguments, RerankerTrainingArguments))  # type: ignore[arg-type]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if int(os.environ.get("LOCAL_RANK", "0")) <= 0 else logging.WARNING,
    )
    from bgekit.errors import BgekitError

    try:
        train(*parse_args(argv))
    except BgekitError as exc:
        print(f"bgekit finetune reranker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
