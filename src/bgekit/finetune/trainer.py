"""Trainers: HF ``Trainer`` subclasses for group-based training (embedders here, rerankers alike).

:class:`GroupTrainer` is the shared base (also for reranker training): it samples batches from one
dataset when asked, and saves every checkpoint and the final model in a layout bgekit loads directly
(weights in safetensors, tokenizer, ``bgekit.json`` with the model's settings). The model the
``Trainer`` holds is the plain ``transformers`` backbone, so checkpoints, ``--resume_from_checkpoint``,
DDP and DeepSpeed all work as the ``Trainer`` does them.

:class:`EmbedderTrainer` pools with the model's own pooling (``bgekit.inference.heads.pool``) and
computes the loss of ``bgekit.finetune.losses``: InfoNCE with in-batch and hard negatives,
own-group-only batches, cross-device negatives, distillation, Matryoshka and GradCache.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from bgekit.errors import ConfigError
from bgekit.finetune import losses
from bgekit.finetune.data import GroupDataset, SameDatasetBatchSampler
from bgekit.finetune.gradcache import grad_cache_step
from bgekit.inference.heads import pool
from bgekit.models.settings import write_saved_settings

logger = logging.getLogger(__name__)


class EpochSeedCallback(TrainerCallback):
    """Tell the dataset which epoch starts, so every process draws that epoch's negatives.

    accelerate calls ``dataset.set_epoch`` only when the sampler has no ``set_epoch`` of its own, which
    is the single-process case; under DDP each epoch would otherwise reuse epoch 0's negatives.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int((state.epoch or 0.0) + 1e-6))


class GroupTrainer(Trainer):
    """``Trainer`` over :class:`~bgekit.finetune.data.GroupDataset` batches, saving bgekit's layout.

    Args:
        saved_settings: written to ``bgekit.json`` under ``settings_kind`` at every save, so the output
            (and each checkpoint) loads with the right pooling, normalisation and instructions.
        settings_kind: ``"embedder"`` or ``"reranker"``.
        same_dataset_within_batch: draw each global batch from a single dataset.
        *args, **kwargs: as ``transformers.Trainer``.

    Example:
        >>> trainer = GroupTrainer(model=backbone, args=training_args, train_dataset=ds,
        ...                        data_collator=collator, saved_settings={"pooling": "cls"})  # doctest: +SKIP
    """

    def __init__(
        self,
        *args: Any,
        saved_settings: dict[str, Any] | None = None,
        settings_kind: str = "embedder",
        same_dataset_within_batch: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.saved_settings = dict(saved_settings or {})
        self.settings_kind = settings_kind
        self.same_dataset_within_batch = same_dataset_within_batch
        if self.train_dataset is not None:
            self.add_callback(EpochSeedCallback(self.train_dataset))

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int] | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.same_dataset_within_batch and isinstance(dataset, GroupDataset):
            global_batch = self.args.per_device_train_batch_size * self.args.world_size
            return SameDatasetBatchSampler(
                [len(s.rows) for s in dataset.sources],
                global_batch,
                seed=self.args.data_seed or self.args.seed,
            )
        return super()._get_train_sampler(dataset)  # type: ignore[arg-type]

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        super()._save(output_dir, state_dict=state_dict)
        if self.saved_settings:
            write_saved_settings(output_dir, self.settings_kind, self.saved_settings)


class EmbedderTrainer(GroupTrainer):
    """Contrastive fine-tuning of an embedder; ``self.args`` is an ``EmbedderTrainingArguments``.

    Args:
        pooling: ``cls``, ``mean`` or ``last_token``, from the model's settings.
        normalize: L2-normalise embeddings before scoring.
        *args, **kwargs: as :class:`GroupTrainer`.

    Example:
        >>> trainer = EmbedderTrainer(model=backbone, args=args, train_dataset=ds, data_collator=collate,
        ...                           pooling="mean", normalize=True)   # doctest: +SKIP
        >>> trainer.train()   # doctest: +SKIP
    """

    def __init__(self, *args: Any, pooling: str = "cls", normalize: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pooling = pooling
        self.normalize = normalize

    # ------------------------------------------------------------------------------------- encoding
    def encode(self, model: Any, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled (not yet normalised) float32 embeddings of one padded batch."""
        hidden = model(**features, return_dict=True).last_hidden_state
        return pool(hidden, features["attention_mask"], self.pooling).float()

    def loss_from_embeddings(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        teacher_scores: torch.Tensor | None = None,
        no_in_batch_neg: bool = False,
    ) -> torch.Tensor:
        """The loss of a batch from its pooled embeddings (gathered across processes when asked)."""
        args = self.args
        in_batch = not no_in_batch_neg
        if getattr(args, "negatives_cross_device", False) and in_batch:
            q = losses.gather_keep_local_grad(q)
            p = losses.gather_keep_local_grad(p)
            if teacher_scores is not None:
                teacher_scores = losses.gather_no_grad(teacher_scores.to(q.device))
        kwargs: dict[str, Any] = dict(
            temperature=args.temperature,  # type: ignore[attr-defined]
            teacher_scores=teacher_scores,
            kd_loss_type=args.kd_loss_type,  # type: ignore[attr-defined]
            in_batch_negatives=in_batch,
        )
        if getattr(args, "use_mrl", False):
            return losses.matryoshka_loss(q, p, args.mrl_dims, normalize=self.normalize, **kwargs)  # type: ignore[attr-defined]
        if self.normalize:
            q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
        return losses.embedder_loss(q, p, **kwargs)

    # ------------------------------------------------------------------------------------- training
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        q = self.encode(model, inputs["queries"])
        p = self.encode(model, inputs["passages"])
        loss = self.loss_from_embeddings(
            q, p, inputs.get("teacher_scores"), bool(inputs.get("no_in_batch_neg"))
        )
        return (loss, {"q_reps": q, "p_reps": p}) if return_outputs else loss

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if not getattr(self.args, "grad_cache", False):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        teacher = inputs.get("teacher_scores")
        flag = bool(inputs.get("no_in_batch_neg"))

        def encode(features: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.compute_loss_context_manager():
                return self.encode(model, features)

        loss = grad_cache_step(
            encode,
            lambda q, p: self.loss_from_embeddings(q, p, teacher, flag),
            [inputs["queries"], inputs["passages"]],
            self.args.gc_chunk_size,  # type: ignore[attr-defined]
            loss_scale=1.0 / self.current_gradient_accumulation_steps,
            no_sync=getattr(model, "no_sync", None),
        )
        return loss / self.current_gradient_accumulation_steps


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of a run, oldest first.

    Example:
        >>> checkpoint_folders("/nonexistent")
        []
    """
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()]
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d.split("-")[-1]))]


class M3TrainingModel(torch.nn.Module):
    """A BGE-M3 model under training: the ``transformers`` backbone plus the sparse and ColBERT heads.

    ``forward`` runs the backbone only (the trainer applies the heads), so DDP and the ``Trainer`` see one
    module holding every trained parameter.
    """

    def __init__(self, backbone: Any, heads: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.config = backbone.config

    def forward(self, **features: Any) -> Any:
        return self.backbone(**features)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)


class M3EmbedderTrainer(EmbedderTrainer):
    """BGE-M3 fine-tuning: dense only, or unified (dense + sparse + ColBERT + ensemble, self-distillation).

    Saves the backbone with ``save_pretrained`` and the heads as ``sparse_linear.pt`` /
    ``colbert_linear.pt`` beside it, the layout BGE-M3 checkpoints use, with ``kind: m3`` in
    ``bgekit.json``.

    Args:
        unified: train the sparse and ColBERT heads with the dense embedding.
        self_distill: distil the ensemble's scores into each of the three (after ``self_distill_start_step``).
        unused_token_ids: ids given no lexical weight (CLS, EOS, PAD, UNK).
        vocab_size: size of the lexical vectors.
    """

    def __init__(
        self,
        *args: Any,
        unified: bool = True,
        self_distill: bool = False,
        self_distill_start_step: int = -1,
        unused_token_ids: list[int] | None = None,
        vocab_size: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.unified = unified
        self.self_distill = self_distill
        self.self_distill_start_step = self_distill_start_step
        self.unused_token_ids = torch.tensor(unused_token_ids or [], dtype=torch.long)
        self.vocab_size = vocab_size

    def _m3_parts(self, model: Any, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        heads = self.accelerator.unwrap_model(model).heads
        hidden = model(**features, return_dict=True).last_hidden_state
        mask = features["attention_mask"]
        dense = pool(hidden, mask, self.pooling).float()
        if self.normalize:
            dense = F.normalize(dense, dim=-1)
        if not self.unified:
            return (dense,)
        weights = torch.relu(heads.sparse_linear(hidden.float())).squeeze(-1) * mask
        sparse = losses.sparse_vectors(weights, features["input_ids"], self.vocab_size, self.unused_token_ids)
        colbert = heads.colbert_linear(hidden[:, 1:].float()) * mask[:, 1:].unsqueeze(-1)
        if self.normalize:
            colbert = F.normalize(colbert, dim=-1)
        return dense, sparse, colbert

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        args: Any = self.args
        q_parts = self._m3_parts(model, inputs["queries"])
        p_parts = self._m3_parts(model, inputs["passages"])
        group_size = p_parts[0].shape[0] // q_parts[0].shape[0]
        kwargs: dict[str, Any] = dict(
            teacher_scores=inputs.get("teacher_scores"),
            kd_loss_type=args.kd_loss_type,
            in_batch_negatives=not bool(inputs.get("no_in_batch_neg")),
        )
        tau = args.temperature
        dense = losses.similarity(q_parts[0], p_parts[0], tau)
        if not self.unified:
            loss = losses.scores_loss(dense, group_size, **kwargs)
        else:
            sparse = losses.similarity(q_parts[1], p_parts[1], tau)
            colbert = (
                losses.colbert_scores(q_parts[2], p_parts[2], inputs["queries"]["attention_mask"][:, 1:])
                / tau
            )
            loss = losses.m3_unified_loss(
                dense,
                sparse,
                colbert,
                group_size,
                self_distill=self.self_distill and self.state.global_step > self.self_distill_start_step,
                **kwargs,
            )
        return (loss, {}) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.backbone.save_pretrained(output_dir, safe_serialization=True)
        model.heads.save(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if self.saved_settings:
            write_saved_settings(output_dir, self.settings_kind, self.saved_settings)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        from bgekit.inference.heads import M3Heads

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        missing, _ = target.backbone.load_state_dict(load_file(weights), strict=False)
        if missing:
            from bgekit.errors import ModelLoadError

            raise ModelLoadError(f"{weights} lacks weights {missing[:5]}; is it a checkpoint of this model?")
        hidden = int(target.backbone.config.hidden_size)
        target.heads.load_state_dict(M3Heads.from_folder(resume_from_checkpoint, hidden).state_dict())


def apply_lora(model: Any, model_args: Any, task_type: str) -> Any:
    """Wrap ``model`` with LoRA adapters (peft) on ``model_args.target_modules`` (those the model has).

    Both fine-tuning entry points use it: embedders with ``"FEATURE_EXTRACTION"``, LLM rerankers with
    ``"CAUSAL_LM"``. ``model_args`` carries ``lora_rank``, ``lora_alpha``, ``lora_dropout`` and
    ``target_modules``.

    Raises:
        ConfigError: peft is not installed, or no target module is in the model (its own are listed).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("--use_lora needs peft: pip install 'bgekit[train]' (or pip install peft)") from exc
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in model_args.target_modules if m in present]
    if not targets:
        raise ConfigError(
            f"--target_modules {model_args.target_modules} match no module of {type(model).__name__}; "
            f"its linear layers include {sorted(n for n in present if 'proj' in n or 'dense' in n)[:12]}"
        )
    config = LoraConfig(
        r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )
    return get_peft_model(model, config)
