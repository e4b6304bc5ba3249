"""The reranker trainer: scores of grouped pairs through the inference heads, the ranking losses, and the
held-out ranking metrics (as ``trainer.py`` holds the embedder's)."""

from __future__ import annotations

from typing import Any

import torch

from bgekit.finetune.reranker_losses import group_scores, layerwise_loss, reranker_loss
from bgekit.finetune.trainer import GroupTrainer
from bgekit.inference.rerank_heads import cross_encoder_scores, layerwise_generic_scores, llm_scores


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
