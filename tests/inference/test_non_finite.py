"""NaN/Inf model outputs are refused, naming the input positions, instead of reaching indexes or files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bgekit import Embedder, Reranker
from bgekit.errors import NonFiniteOutputError
from tests.builders import build_bert_cross_encoder, build_tiny_bert

TEXTS = ["a cat sat on the mat", "the zebra runs home", "a dog barks", "rain in spain", "zebra crossing"]
"""Positions 1 and 4 hold "zebra", a token no other text has."""


def poisoned_token(tokenizer: Any) -> int:
    """The id of the token that only TEXTS[1] and TEXTS[4] contain."""
    ids = [set(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]
    only = (ids[1] & ids[4]) - set().union(*(ids[i] for i in (0, 2, 3)))
    assert only, "the fixture's texts need a token of their own"
    return min(only)


def poison(embeddings: torch.nn.Embedding, token: int) -> None:
    with torch.no_grad():
        embeddings.weight[token] = float("nan")


@pytest.fixture(scope="module")
def nan_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny BERT whose saved embedding of "zebra" is NaN (device-pool workers load it from disk)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    folder = Path(build_tiny_bert(tmp_path_factory.mktemp("nan-bert"), minilm_tokenizer_dir))
    token = poisoned_token(AutoTokenizer.from_pretrained(folder))
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][token] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


def test_embedder_names_the_inputs_with_nan_vectors(nan_bert_dir: str) -> None:
    embedder = Embedder(nan_bert_dir, device="cpu")
    with pytest.raises(NonFiniteOutputError, match=r"position\(s\) \[1, 4\]") as info:
        embedder.encode(TEXTS)
    assert info.value.positions == [1, 4]
    assert isinstance(info.value, ArithmeticError)
    assert embedder.encode([TEXTS[0], TEXTS[2]]).shape == (2, 32)  # finite inputs still encode


def test_device_pool_positions_count_from_the_whole_call(nan_bert_dir: str) -> None:
    # five texts over two workers run as five one-text slices: the error must add each slice's offset
    with (
        Embedder(nan_bert_dir, devices=["cpu", "cpu"]) as embedder,
        pytest.raises(NonFiniteOutputError, match=r"position\(s\) \[1\]") as info,
    ):
        embedder.encode(TEXTS)
    assert info.value.positions == [1]  # the pool re-raises the first failing slice's error


def test_m3_sparse_and_colbert_lists_are_checked(tiny_m3_dir: str) -> None:
    embedder = Embedder(tiny_m3_dir, device="cpu")
    poison(embedder.model.embeddings.word_embeddings, poisoned_token(embedder.tokenizer))
    for heads in ({"return_sparse": True}, {"return_colbert_vecs": True}):
        with pytest.raises(NonFiniteOutputError, match=r"\[1, 4\]"):
            embedder.encode(TEXTS, return_dense=False, **heads)


def test_reranker_names_the_pairs_with_nan_scores(tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    reranker = Reranker(build_bert_cross_encoder(tmp_path, minilm_tokenizer_dir), device="cpu")
    poison(reranker.model.bert.embeddings.word_embeddings, poisoned_token(reranker.tokenizer))
    pairs = [("what runs?", text) for text in TEXTS]
    with pytest.raises(NonFiniteOutputError, match=r"position\(s\) \[1, 4\]"):
        reranker.compute_score(pairs)
    assert len(reranker.compute_score([pairs[0], pairs[2]])) == 2
