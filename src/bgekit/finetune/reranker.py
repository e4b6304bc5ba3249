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
from typing import Any, Literal

from transformers import TrainingArguments

from bgekit.errors import ConfigError
from bgekit.finetune import entry
from bgekit.finetune.data import SamplingOptions, load_sources
from bgekit.finetune.reranker_arguments import (
    DEFAULT_LORA_TARGETS,
    RerankerDataArguments,
    RerankerModelArguments,
    RerankerTrainingArguments,
    TrainKind,
)
from bgekit.finetune.reranker_data import PairCollator, PairGroup, PairGroupDataset, PairSettings
from bgekit.finetune.reranker_trainer import RerankerTrainer, group_ranking_metrics
from bgekit.finetune.trainer import apply_lora
from bgekit.inference.rerank_inputs import CrossEncoderInputs
from bgekit.models import reranker_registry

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "PairCollator",
    "PairGroup",
    "PairGroupDataset",
    "PairSettings",
    "RerankerDataArguments",
    "RerankerModelArguments",
    "RerankerTrainer",
    "RerankerTrainingArguments",
    "TrainKind",
    "build_trainer",
    "group_ranking_metrics",
    "main",
    "parse_args",
    "train",
    "yes_token_id",
]

logger = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------------------ build
def resolve_kind(
    model_args: RerankerModelArguments, config: Any
) -> Literal["cross-encoder", "llm", "layerwise"]:
    """The kind to train: as asked, else from the architecture (a causal LM is ``llm``, or ``layerwise``
    with ``--cutoff_layers``; anything else is a cross-encoder)."""
    from bgekit.inference.reranker_settings import detect_kind, with_layers

    if model_args.model_type != "auto":
        return model_args.model_type
    return with_layers(detect_kind(config), model_args.cutoff_layers)  # type: ignore[return-value]


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
        model = apply_lora(model, model_args, "CAUSAL_LM")
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
        entry.save_merged_lora(trainer, os.path.join(output_dir, "merged_model"), "reranker")


def train(
    model_args: RerankerModelArguments,
    data_args: RerankerDataArguments,
    training_args: RerankerTrainingArguments,
) -> RerankerTrainer:
    """Fine-tune the reranker and save it to ``training_args.output_dir``, from where ``bgekit.Reranker``
    loads it; resuming and the staged save are :func:`bgekit.finetune.entry.train_and_save`'s.

    Example:
        >>> train(RerankerModelArguments("model/"), RerankerDataArguments(["t.jsonl"]),
        ...       RerankerTrainingArguments("out", num_train_epochs=1))   # doctest: +SKIP
    """
    return entry.train_and_save(
        training_args,
        lambda: build_trainer(model_args, data_args, training_args),
        lambda trainer, folder: save_final(trainer, model_args, folder),
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[RerankerModelArguments, RerankerDataArguments, RerankerTrainingArguments]:
    """Parse command-line arguments (ours plus every ``TrainingArguments`` option)."""
    classes = (RerankerModelArguments, RerankerDataArguments, RerankerTrainingArguments)
    return entry.parse_args(classes, argv)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    return entry.main("reranker", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
