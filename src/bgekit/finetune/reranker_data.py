"""Reranker training data: sampled groups with their rows' prompts, and the collator that builds pairs
as inference builds them (``bgekit.inference.rerank_inputs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from bgekit.errors import ConfigError
from bgekit.finetune.data import Group, GroupDataset, SamplingOptions
from bgekit.inference.inputs import apply_instruction
from bgekit.inference.rerank_inputs import CrossEncoderInputs, PromptInputs
from bgekit.models import reranker_registry


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
