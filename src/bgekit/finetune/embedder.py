"""Embedder fine-tuning entry point: ``python -m bgekit.finetune.embedder`` or ``torchrun -m ...``.

Example::

    torchrun --nproc_per_node 2 -m bgekit.finetune.embedder --model_name_or_path BAAI/bge-small-en-v1.5 \\
        --train_data train.jsonl --output_dir out/ --train_group_size 8 --temperature 0.02 \\
        --negatives_cross_device --knowledge_distillation --num_train_epochs 1 --learning_rate 1e-5

The same as ``bgekit finetune embedder ...`` and, from Python, :func:`train`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from bgekit.errors import ConfigError
from bgekit.finetune import entry
from bgekit.finetune.arguments import DataArguments, EmbedderTrainingArguments, ModelArguments
from bgekit.finetune.data import (
    GroupCollator,
    GroupDataset,
    SamplingOptions,
    load_sources,
    no_in_batch_neg_sources,
)
from bgekit.finetune.trainer import EmbedderTrainer, M3EmbedderTrainer, M3TrainingModel, apply_lora

logger = logging.getLogger(__name__)


def resolve_settings(model_args: ModelArguments, data_args: DataArguments) -> tuple[str, Any]:
    """The model folder and the settings training uses (and saves): the model's own, plus overrides."""
    from bgekit.models.loading import resolve_model_folder
    from bgekit.models.settings import resolve_embedder_settings

    folder = resolve_model_folder(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    explicit: dict[str, Any] = {
        "pooling": model_args.sentence_pooling_method,
        "normalize": model_args.normalize_embeddings,
    }
    if data_args.query_instruction_for_retrieval is not None:
        explicit["query_instruction"] = data_args.query_instruction_for_retrieval
        explicit["query_instruction_format"] = data_args.query_instruction_format
    if data_args.passage_instruction_for_retrieval is not None:
        explicit["passage_instruction"] = data_args.passage_instruction_for_retrieval
        explicit["passage_instruction_format"] = data_args.passage_instruction_format
    settings, origin = resolve_embedder_settings(model_args.model_name_or_path, folder, explicit)
    from bgekit.inference.heads import COLBERT_FILE, SPARSE_FILE

    if "kind" not in origin and all(
        os.path.isfile(os.path.join(folder, f)) for f in (SPARSE_FILE, COLBERT_FILE)
    ):
        settings.kind = "m3"
    if "kind" not in origin:
        from transformers import AutoConfig

        from bgekit.inference.kinds import is_decoder_only

        config = AutoConfig.from_pretrained(folder, trust_remote_code=model_args.trust_remote_code)
        if is_decoder_only(config):
            # as inference decides it: decoder-only models pool their last token unless told otherwise
            settings.kind = "decoder"
            if "pooling" not in origin:
                settings.pooling = "last_token"
    if settings.kind == "icl":
        raise ConfigError(
            f"{model_args.model_name_or_path}: kind='icl' models are not trained by this entry point yet; "
            "encoder, decoder and m3 embedders are"
        )

    return folder, settings


def m3_model(
    backbone: Any, folder: str, tokenizer: Any, args: EmbedderTrainingArguments
) -> tuple[Any, dict[str, Any]]:
    """The backbone with BGE-M3's heads (read from the folder, or new), and the M3 trainer's options."""
    from bgekit.inference.heads import COLBERT_FILE, SPARSE_FILE, M3Heads

    hidden = int(backbone.config.hidden_size)
    if all(os.path.isfile(os.path.join(folder, f)) for f in (SPARSE_FILE, COLBERT_FILE)):
        heads = M3Heads.from_folder(folder, hidden)
    else:
        heads = M3Heads(hidden, args.colbert_dim if args.colbert_dim > 0 else hidden)
    heads.train()
    if args.fix_encoder:
        for param in backbone.parameters():
            param.requires_grad_(False)
    unused = [
        i
        for i in (
            tokenizer.cls_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
        )
        if i is not None
    ]
    options = dict(
        unified=args.unified_finetuning,
        self_distill=args.use_self_distill,
        self_distill_start_step=args.self_distill_start_step,
        unused_token_ids=unused,
        vocab_size=int(backbone.config.vocab_size),
    )
    return M3TrainingModel(backbone, heads), options


def build_trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: EmbedderTrainingArguments
) -> EmbedderTrainer:
    """Load model, tokenizer and data, and return a ready :class:`EmbedderTrainer`.

    Example:
        >>> trainer = build_trainer(ModelArguments("BAAI/bge-small-en-v1.5"), DataArguments(["t.jsonl"]),
        ...                         EmbedderTrainingArguments("out"))   # doctest: +SKIP
    """
    import torch
    from transformers import AutoModel

    from bgekit.models.loading import load_pretrained, load_tokenizer

    if not data_args.train_data:
        raise ConfigError("--train_data is required: one or more JSONL files or folders")
    folder, settings = resolve_settings(model_args, data_args)
    tokenizer = load_tokenizer(
        model_args.tokenizer_name or folder,
        trust_remote_code=model_args.trust_remote_code,
        padding_side=settings.padding_side,
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = load_pretrained(
        AutoModel,
        folder,
        dtype=torch.float32,
        device=torch.device("cpu"),
        trust_remote_code=model_args.trust_remote_code,
    )
    model.train()
    for name, param in model.named_parameters():
        if name.startswith("pooler."):
            # BERT's pooler head is not part of the embedding; freezing it lets DDP skip unused-parameter search
            param.requires_grad_(False)
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False
    if model_args.use_lora:
        model = apply_lora(model, model_args, "FEATURE_EXTRACTION")
    if training_args.fix_position_embedding:
        for name, param in model.named_parameters():
            if "position_embeddings" in name:
                param.requires_grad_(False)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False

    sources = load_sources(
        data_args.train_data,
        knowledge_distillation=data_args.knowledge_distillation,
        train_group_size=data_args.train_group_size,
        max_examples_per_dataset=data_args.max_example_num_per_dataset,
        seed=training_args.data_seed or training_args.seed,
    )
    dataset = GroupDataset(
        sources,
        SamplingOptions(
            train_group_size=data_args.train_group_size,
            knowledge_distillation=data_args.knowledge_distillation,
            shuffle_ratio=data_args.shuffle_ratio,
            query_instruction=data_args.query_instruction_for_retrieval,
            query_instruction_format=data_args.query_instruction_format,
            passage_instruction=data_args.passage_instruction_for_retrieval,
            passage_instruction_format=data_args.passage_instruction_format,
            seed=training_args.data_seed or training_args.seed,
        ),
    )
    if (
        not data_args.same_dataset_within_batch
        and len({dataset.group_size_of(i) for i in range(len(sources))}) > 1
    ):
        raise ConfigError(
            "the training datasets set different group sizes (a 'type' or 'train_group_size' field); "
            "add --same_dataset_within_batch so each batch comes from one dataset"
        )
    collator = GroupCollator(
        tokenizer,
        query_max_len=data_args.query_max_len,
        passage_max_len=data_args.passage_max_len,
        pad_to_multiple_of=data_args.pad_to_multiple_of,
        no_in_batch_neg_sources=no_in_batch_neg_sources(sources),
        token_type_ids=settings.kind != "decoder",
    )
    saved = settings.to_dict()
    saved.pop("extra", None)
    if saved.get("dtype") is None:
        saved.pop("dtype", None)
    callbacks = []
    if data_args.eval_dataset:
        from bgekit.finetune.evaluation import RetrievalEvalCallback

        callbacks.append(
            RetrievalEvalCallback(
                data_args.eval_dataset,
                split=data_args.eval_split,
                tokenizer=tokenizer,
                settings=settings,
                max_corpus=data_args.eval_max_corpus,
            )
        )
    trainer_class: Any = EmbedderTrainer
    extra: dict[str, Any] = {}
    if settings.kind == "m3" or training_args.unified_finetuning:
        model, extra = m3_model(model, folder, tokenizer, training_args)
        settings.kind = "m3"
        saved["kind"] = "m3"
        trainer_class = M3EmbedderTrainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        saved_settings=saved,
        same_dataset_within_batch=data_args.same_dataset_within_batch,
        pooling=settings.pooling,
        normalize=settings.normalize,
        callbacks=callbacks or None,
        **extra,
    )
    for callback in callbacks:
        callback.trainer = trainer  # logs its metrics with the loss
    return trainer


def train(
    model_args: ModelArguments, data_args: DataArguments, training_args: EmbedderTrainingArguments
) -> EmbedderTrainer:
    """Fine-tune and save to ``training_args.output_dir`` (loadable with ``bgekit.Embedder``).

    Resumes and saves as :func:`bgekit.finetune.entry.train_and_save` describes: from
    ``training_args.resume_from_checkpoint`` when given, into a staging folder renamed into place.

    Example:
        >>> train(ModelArguments("BAAI/bge-small-en-v1.5"), DataArguments(["t.jsonl"]),
        ...       EmbedderTrainingArguments("out", num_train_epochs=1))   # doctest: +SKIP
    """

    def write_final(trainer: EmbedderTrainer, folder: str) -> None:
        if model_args.use_lora:
            save_lora(trainer, model_args, folder)
        else:
            trainer.save_model(folder)

    return entry.train_and_save(
        training_args, lambda: build_trainer(model_args, data_args, training_args), write_final
    )


def save_lora(trainer: EmbedderTrainer, model_args: ModelArguments, out: str | None = None) -> None:
    """Save the adapter under ``output_dir/lora_adapter`` and, merged, the full model in ``output_dir``.

    The merged folder loads as a plain model with ``bgekit.Embedder(output_dir)``; the adapter alone
    loads with ``bgekit.Embedder(base_model, adapter=output_dir + "/lora_adapter")``. ``out`` replaces
    ``output_dir`` (the final save writes into a staging folder).
    """

    out = str(trainer.args.output_dir) if out is None else out
    trainer.save_model(os.path.join(out, "lora_adapter"))
    if model_args.save_merged_lora_model and trainer.is_world_process_zero():
        entry.save_merged_lora(trainer, out, "embedder")


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, EmbedderTrainingArguments]:
    """Parse command-line arguments (ours plus every ``TrainingArguments`` option)."""
    return entry.parse_args((ModelArguments, DataArguments, EmbedderTrainingArguments), argv)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    return entry.main("embedder", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
