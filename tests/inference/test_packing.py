"""Packed rows on PyTorch: short texts share a row under a block-diagonal mask and get what they get alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgekit import Embedder
from bgekit.inference import packing


@pytest.fixture
def packed_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(texts, packed rows) of every batch that ran packed."""
    seen: list[tuple[int, int]] = []
    real_init = packing.PackedBatch.__init__

    def spy(self: packing.PackedBatch, input_ids: torch.Tensor, *args: object, **kwargs: object) -> None:
        real_init(self, input_ids, *args, **kwargs)  # type: ignore[arg-type]
        seen.append((len(input_ids), len(self.inputs["input_ids"])))

    monkeypatch.setattr(packing.PackedBatch, "__init__", spy)
    return seen


def test_small_groups_of_queries_equal_each_query_alone(
    minilm_path: str, scifact_queries: list[dict], packed_batches: list[tuple[int, int]]
) -> None:
    """Real MiniLM on the CPU: groups of 9 SciFact queries of many lengths (a server's small requests) run
    in shared rows, one forward each, and equal every query encoded on its own to 1e-5."""
    queries = [q["text"] for q in scifact_queries[:36]]
    model = Embedder(minilm_path, device="cpu")
    alone = np.concatenate([model.encode([q]) for q in queries])
    assert not packed_batches  # one text per batch: nothing to pack
    groups = np.concatenate([model.encode(queries[i : i + 9]) for i in range(0, 36, 9)])
    np.testing.assert_allclose(groups, alone, atol=1e-5)
    assert len(packed_batches) == 4 and all(rows < texts for texts, rows in packed_batches)


def test_m3_outputs_equal_unpacked_with_positions_from_the_padding_id(
    tiny_m3_dir: str, scifact_corpus: list[dict], packed_batches: list[tuple[int, int]]
) -> None:
    """XLM-RoBERTa counts positions from its padding id + 1: dense, sparse and ColBERT outputs of packed
    batches equal each text alone."""
    docs = [d["text"][: 20 + 23 * i] for i, d in enumerate(scifact_corpus[:12])]
    model = Embedder(tiny_m3_dir, device="cpu", passage_max_length=128)
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    together = model.encode(docs, **flags)
    assert packed_batches
    for i, doc in enumerate(docs):
        alone = model.encode([doc], **flags)
        np.testing.assert_allclose(together["dense_vecs"][i], alone["dense_vecs"][0], atol=1e-5)
        np.testing.assert_allclose(together["colbert_vecs"][i], alone["colbert_vecs"][0], atol=1e-5)
        mine, theirs = together["lexical_weights"][i], alone["lexical_weights"][0]
        assert mine.keys() == theirs.keys()
        np.testing.assert_allclose([mine[k] for k in theirs], [theirs[k] for k in theirs], atol=1e-5)


def test_only_cpu_encoders_with_known_positions_are_wrapped(tiny_bert_dir: str) -> None:
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="sdpa")
    assert isinstance(packing.packing_encoder(bert, torch.device("cpu")), packing.PackingEncoder)
    assert packing.packing_encoder(bert, torch.device("cuda")) is bert  # fused attention wants no mask
    relative = AutoModel.from_pretrained(tiny_bert_dir, position_embedding_type="relative_key")
    assert packing.packing_encoder(relative, torch.device("cpu")) is relative
    runner = object()  # a graph runner: not a torch module
    assert packing.packing_encoder(runner, torch.device("cpu")) is runner


def test_a_batch_with_an_empty_row_runs_as_it_is(tiny_bert_dir: str) -> None:
    """An all-padding row has no segment to pack; the batch runs padded and matches the model's own forward."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(tiny_bert_dir).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 2146, 3793, 102], [0] * 7, [101, 102, 0, 0, 0, 0, 0]])
    mask = (ids > 0).long()
    with torch.inference_mode():
        out = packing.PackingEncoder(bert, offset=0)(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref)


def test_layout_runs_fewer_slots_than_first_fit_on_real_query_lengths(
    minilm_path: str, scifact_queries: list[dict]
) -> None:
    """SciFact queries in groups of 8 and 45 (a server's groups at low and high load), as MiniLM tokenizes
    them: every text is in exactly one row, no row passes 128 tokens, and the rows x the widest row are never
    more than first-fit decreasing gives and fewer over all groups."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    lengths = [len(ids) for ids in tokenizer([q["text"] for q in scifact_queries[:720]])["input_ids"]]
    for size in (8, 45):
        ours = theirs = 0
        for start in range(0, len(lengths), size):
            group = lengths[start : start + size]
            rows = packing.packed_layout(group, 128)
            assert sorted(i for row in rows for i in row) == list(range(len(group)))
            width = max(sum(group[i] for i in row) for row in rows)
            assert width <= 128
            first_fit = packing.pack_rows(group, 128)
            slots = len(first_fit) * max(sum(group[i] for i in row) for row in first_fit)
            assert len(rows) * width <= slots
            ours, theirs = ours + len(rows) * width, theirs + slots
        assert ours < 0.96 * theirs, (size, ours, theirs)
