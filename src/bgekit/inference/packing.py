"""Sequence packing for encoder graphs: several short texts share one row, each attending only to itself.

A batch of short texts of many lengths wastes most of a padded forward pass on padding (a group of 36
SciFact queries padded to its longest row is half padding). Packed, the texts are laid end to end in rows
of about ``PACK_ROW_TOKENS`` tokens; each token carries its text's segment id and its position inside the
text, and the graph turns the segment ids into a block-diagonal attention mask, so every text gets
exactly the hidden states it gets alone (to float rounding). The runner scatters the results back to the
padded layout the heads expect.

The packed graph is the model exported with two extra inputs, ``position_ids`` and ``segment_ids``
(:class:`PackedEncoder`); it also runs ordinary padded batches (one segment per row). It exists for
encoders whose position embeddings are absolute and indexed from a known offset (:func:`position_offset`):
BERT counts from 0, RoBERTa and XLM-RoBERTa from their padding id + 1.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from bgekit.engine.batching import balanced_parts

PACK_ABOVE_PADDING = 0.1
"""Pack a batch when more than this share of its tokens is padding. A packed batch's real token costs
about 1 / (1 - this) padded ones (rows of 128 tokens attend further than short padded rows): the batch
planner's ``packed_token_cost`` (:data:`PACKED_TOKEN_COST`)."""

PACKED_TOKEN_COST = 1.0 / (1.0 - PACK_ABOVE_PADDING)

PACK_ROW_TOKENS = 128
"""Tokens per packed row at most (a longer text gets a row of its own; :func:`packed_layout` may run
narrower rows). Rows of 96-128 tokens ran groups of 36 SciFact queries 1.5-1.7x faster than padding them,
and rows of 64 or 192 were slower: short rows mean many rows, long rows spend more on attention across
texts that is masked anyway."""

PACK_MAX_LENGTH = PACK_ROW_TOKENS
"""Only a batch whose longest text fits in one row is packed. Longer texts (documents) come length-sorted
with little padding, and rows as long as they are attend across whole texts that the mask then drops:
groups of 32 mixed-length SciFact documents encoded 2-4% slower packed than padded."""

_OFFSET_FROM_PADDING = ("roberta", "xlm-roberta", "camembert")


def position_offset(config: Any) -> int | None:
    """The position id of a text's first token for this encoder config, or ``None`` when it cannot be packed.

    Example:
        >>> from transformers import BertConfig, XLMRobertaConfig
        >>> position_offset(BertConfig()), position_offset(XLMRobertaConfig(pad_token_id=1))
        (0, 2)
    """
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    model_type = getattr(config, "model_type", "")
    if model_type == "bert":
        return 0
    if model_type in _OFFSET_FROM_PADDING and config.pad_token_id is not None:
        return int(config.pad_token_id) + 1
    return None


class PackedEncoder(torch.nn.Module):
    """Export wrapper: an encoder that takes position ids and segment ids and returns ``last_hidden_state``.

    Tokens attend to the tokens of their own segment; segment 0 is padding and is attended by none.
    """

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs, strict=True))
        segments = given.pop("segment_ids")
        out = self.model(**given, attention_mask=segment_mask(segments), return_dict=True)
        return out.last_hidden_state


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """(rows, query, key) attention mask: a token sees the tokens of its own segment; segment 0 is padding.

    A 3-D mask is what ``transformers``' BERT-family encoders take for their eager and SDPA attention.

    Example:
        >>> segment_mask(torch.tensor([[1, 1, 2, 0]]))[0]
        tensor([[1, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 1, 0],
                [0, 0, 0, 0]])
    """
    return ((segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)).long()


class PackingEncoder:
    """A PyTorch encoder called like itself that runs a batch with much padding as packed rows.

    On the CPU a padded token costs what a real one costs; a batch with more than ``PACK_ABOVE_PADDING``
    padding (a server's group of short queries of many lengths) runs with its texts in shared rows of
    ``PACK_ROW_TOKENS`` tokens under a block-diagonal mask, in one forward pass; others run as they are.
    A packed batch with NaN or infinite outputs runs again padded, as one text's NaN reaches the other texts
    of its row, so the engine's error names only the inputs that gave them.
    Use :func:`packing_encoder` to wrap a model only where this holds.

    Example:
        >>> encoder = packing_encoder(model, torch.device("cpu"))     # doctest: +SKIP
        >>> encoder(input_ids=ids, attention_mask=mask).last_hidden_state   # doctest: +SKIP
    """

    packed_token_cost = PACKED_TOKEN_COST
    packed_max_length = PACK_MAX_LENGTH

    def __init__(self, model: Any, offset: int) -> None:
        self.model, self.offset = model, offset

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SimpleNamespace:
        real = attention_mask > 0
        lengths = real.sum(1)
        if not worth_packing(input_ids, lengths) or not bool(lengths.all()):
            return self._padded(input_ids, attention_mask, token_type_ids)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        batch = PackedBatch(input_ids, types, real, lengths, offset=self.offset, capacity=PACK_ROW_TOKENS)
        inputs = dict(batch.inputs)
        mask = segment_mask(inputs.pop("segment_ids"))
        hidden = self.model(**inputs, attention_mask=mask, return_dict=True).last_hidden_state
        if not bool(torch.isfinite(hidden).all()):  # NaN reaches the other texts of its row: run unpacked
            return self._padded(input_ids, attention_mask, token_type_ids)
        return SimpleNamespace(last_hidden_state=batch.unpack(hidden))

    def _padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> SimpleNamespace:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        )
        return SimpleNamespace(last_hidden_state=out.last_hidden_state)

    __call__ = forward


def packing_encoder(model: Any, device: torch.device) -> Any:
    """``model`` wrapped in a :class:`PackingEncoder` where packing pays and is exact, else ``model`` itself.

    That is a ``transformers`` encoder on the CPU (an accelerator's fused attention runs only without a
    dense mask) with eager or SDPA attention and positions :func:`position_offset` knows.
    """
    config = getattr(model, "config", None)
    if device.type != "cpu" or not isinstance(model, torch.nn.Module) or config is None:
        return model
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return model
    offset = position_offset(config)
    return model if offset is None else PackingEncoder(model, offset)


def worth_packing(input_ids: torch.Tensor, lengths: torch.Tensor) -> bool:
    """Whether a padded batch runs faster packed: more than ``PACK_ABOVE_PADDING`` of it is padding and no
    text is longer than ``PACK_MAX_LENGTH`` tokens.

    Example:
        >>> worth_packing(torch.zeros(2, 40), torch.tensor([40, 8]))
        True
        >>> worth_packing(torch.zeros(2, 400), torch.tensor([400, 80]))
        False
    """
    return padding_share(input_ids, lengths) > PACK_ABOVE_PADDING and int(lengths.max()) <= PACK_MAX_LENGTH


def padding_share(input_ids: torch.Tensor, lengths: torch.Tensor) -> float:
    """The share of a padded batch's positions that are padding.

    Example:
        >>> padding_share(torch.zeros(2, 4), torch.tensor([4, 2]))
        0.25
    """
    return 1.0 - float(lengths.sum()) / max(input_ids.numel(), 1)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the texts (by index) in each row, every row's lengths summing to <= capacity.

    Example:
        >>> pack_rows([5, 9, 3, 4], capacity=12)
        [[1, 2], [0, 3]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, left in enumerate(room):
            if lengths[index] <= left:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def packed_layout(lengths: list[int], capacity: int) -> list[list[int]]:
    """The texts (by index) in each packed row, laid out to run the fewest token slots (rows x the longest row).

    First-fit decreasing fills rows up to ``capacity`` and leaves the last one part empty, and every row
    runs as wide as the fullest; the same texts spread evenly over as many rows, or one more, often run
    narrower (a group of 45 SciFact queries: 98% of the slots real instead of 93%). The layout with the
    fewest slots wins; no row holds more than ``capacity`` tokens unless one text alone does.

    Example:
        >>> pack_rows([40, 30, 30, 20, 10], capacity=64)
        [[0, 3], [1, 2], [4]]
        >>> packed_layout([40, 30, 30, 20, 10], capacity=64)   # 3 rows of 50 slots instead of 3 of 60
        [[0], [1, 3], [2, 4]]
    """
    rows = pack_rows(lengths, capacity)
    best, fewest = rows, len(rows) * _widest(rows, lengths)
    limit = max(capacity, max(lengths, default=0))
    for count in (len(rows), len(rows) + 1):
        spread = balanced_parts(lengths, count)
        width = _widest(spread, lengths)
        if width <= limit and len(spread) * width < fewest:
            best, fewest = spread, len(spread) * width
    return best


def _widest(rows: list[list[int]], lengths: list[int]) -> int:
    return max((sum(lengths[i] for i in row) for row in rows), default=0)


def unpacked_inputs(
    input_ids: torch.Tensor, token_type_ids: torch.Tensor, real: torch.Tensor, offset: int
) -> dict[str, torch.Tensor]:
    """A packed graph's inputs for a right-padded batch run as it is, one text per row (segment 1; 0 is padding).

    Example:
        >>> ids = torch.tensor([[5, 6, 0]])
        >>> unpacked_inputs(ids, ids * 0, ids > 0, offset=2)["position_ids"]
        tensor([[2, 3, 4]])
    """
    columns = (
        torch.arange(input_ids.shape[1]) + offset
    )  # padding positions get any valid id: nothing sees them
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "position_ids": columns.expand_as(input_ids),
        "segment_ids": real.long(),
    }


class PackedBatch:
    """A padded batch's real tokens laid out in packed rows, and the way back.

    Args:
        input_ids, token_type_ids: the padded batch, (rows, width).
        real: which positions hold real tokens (left or right padding alike).
        lengths: real tokens per row.
        offset: the position id of each text's first token (:func:`position_offset`).
        capacity: tokens per packed row (a longer text gets a row of its own); ``None``: one text per row,
            right-padded (the batch as it came, left padding moved to the right).

    Example:
        >>> ids = torch.tensor([[5, 6, 0], [7, 0, 0]]); real = ids > 0
        >>> batch = PackedBatch(ids, ids * 0, real, real.sum(1), offset=0, capacity=4)
        >>> batch.inputs["input_ids"], batch.inputs["position_ids"], batch.inputs["segment_ids"]
        (tensor([[5, 6, 7]]), tensor([[0, 1, 0]]), tensor([[1, 1, 2]]))
        >>> batch.unpack(batch.inputs["input_ids"][..., None].float())[..., 0]
        tensor([[5., 6., 0.],
                [7., 0., 0.]])
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        real: torch.Tensor,
        lengths: torch.Tensor,
        *,
        offset: int,
        capacity: int | None,
    ) -> None:
        self.source = real.nonzero(as_tuple=True)  # (row, column) of each real token, row by row
        self.shape = input_ids.shape
        counts = lengths.tolist()
        layout = (
            [[index] for index in range(len(counts))]
            if capacity is None
            else packed_layout(counts, max(capacity, max(counts)))
        )
        width = _widest(layout, counts)
        row_of = torch.empty(len(counts), dtype=torch.long)
        start = torch.empty(len(counts), dtype=torch.long)
        for number, row in enumerate(layout):
            used = 0
            for index in row:
                row_of[index], start[index] = number, used
                used += counts[index]
        within = torch.arange(len(self.source[0])) - (torch.cumsum(lengths, 0) - lengths).repeat_interleave(
            lengths
        )
        self.target = (row_of.repeat_interleave(lengths), start.repeat_interleave(lengths) + within)
        shape = (len(layout), width)
        self.inputs = {
            "input_ids": input_ids.new_zeros(shape),
            "token_type_ids": token_type_ids.new_zeros(shape),
            "position_ids": torch.zeros(shape, dtype=torch.long),
            "segment_ids": torch.zeros(shape, dtype=torch.long),
        }
        self.inputs["input_ids"][self.target] = input_ids[self.source]
        self.inputs["token_type_ids"][self.target] = token_type_ids[self.source]
        self.inputs["position_ids"][self.target] = within + offset
        self.inputs["segment_ids"][self.target] = self.source[0] + 1

    def unpack(self, output: torch.Tensor) -> torch.Tensor:
        """Per-token outputs of the packed rows -> the padded batch's layout (padding positions zero)."""
        result = output.new_zeros((*self.shape, *output.shape[2:]))
        result[self.source] = output[self.target]
        return result
