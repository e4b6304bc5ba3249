"""GradCache gives the loss and gradients of the plain full batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bgekit.finetune.gradcache import RandContext, grad_cache_step, split_features
from bgekit.finetune.losses import embedder_loss
from bgekit.inference.heads import pool


@pytest.fixture(scope="module")
def tiny(minilm_tokenizer_dir: str):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertModel(config).train(), tok


def batch(tok, n_q: int, group: int):  # type: ignore[no-untyped-def]
    queries = [f"query number {i} about topic {i % 3}" for i in range(n_q)]
    passages = [
        f"passage {j} of group {i} " + "word " * (j + i % 4) for i in range(n_q) for j in range(group)
    ]
    return (
        dict(tok(queries, padding=True, return_tensors="pt")),
        dict(tok(passages, padding=True, return_tensors="pt")),
        torch.randn(n_q, group),
    )


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("chunk", [1, 4])
def test_grad_cache_equals_full_batch(tiny, chunk: int, teacher: bool) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    qf, pf, scores = batch(tok, 6, 3)
    t = scores if teacher else None

    def encode(features):  # type: ignore[no-untyped-def]
        return pool(model(**features).last_hidden_state, features["attention_mask"], "mean")

    def loss_fn(q, p):  # type: ignore[no-untyped-def]
        return embedder_loss(
            F.normalize(q, dim=-1), F.normalize(p, dim=-1), temperature=0.05, teacher_scores=t
        )

    model.zero_grad()
    full = loss_fn(encode(qf), encode(pf))
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    cached = grad_cache_step(encode, loss_fn, [qf, pf], chunk)
    assert float(cached) == pytest.approx(float(full.detach()), abs=1e-5)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_rand_context_replays_dropout() -> None:
    layer = torch.nn.Dropout(0.5)
    x = torch.ones(4, 8)
    state = RandContext()
    first = layer(x)
    with state:
        again = layer(x)
    assert torch.equal(first, again)


def test_split_features_chunks_rows() -> None:
    chunks = split_features(
        {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2)}, 2
    )
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), torch.arange(10).reshape(5, 2))
