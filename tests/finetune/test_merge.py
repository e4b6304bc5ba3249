"""Merging (LM-Cocktail): weighted averages of real MiniLM embedders and tiny cross-encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import Embedder
from bgekit.cli.main import main as cli_main
from bgekit.errors import ConfigError, DataFormatError, ModelLoadError
from bgekit.finetune.merge import (
    check_same_tensors,
    cocktail_weights,
    merge_models,
    merge_state_dicts,
    normalize_weights,
    read_examples,
    read_state_dict,
)
from tests.builders import build_bert_cross_encoder, perturbed_copy, toy_rows, write_jsonl

TEXTS = [
    "0-dimensional biomaterials show inductive properties.",
    "Nanotechnologies are emerging platforms for stem cell tracking and differentiation.",
    "The giant panda is a bear native to South Central China.",
]


@pytest.fixture(scope="module")
def noisy_minilm(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """MiniLM with strong noise on every weight: a clearly worse embedder of the same architecture."""
    return perturbed_copy(minilm_path, tmp_path_factory.mktemp("noisy-minilm"), scale=0.5, seed=1)


@pytest.fixture(scope="module")
def scifact_examples(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> str:
    source = shared_data / "finetune" / "scifact-train" / "scifact_train_bm25neg.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[:6]]
    path = tmp_path_factory.mktemp("examples") / "few.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(
                json.dumps({"query": row["query"], "pos": row["pos"][:1], "neg": row["neg"][:3]}) + "\n"
            )
    return str(path)


def _embed(path: str) -> np.ndarray:
    with Embedder(path, device="cpu", show_progress=False) as model:
        return model.encode_corpus(TEXTS)


def test_self_merge_gives_the_same_embeddings(tmp_path: Path, minilm_path: str) -> None:
    out = tmp_path / "merged"
    weights = merge_models([minilm_path, minilm_path], out, [0.5, 0.5])
    assert weights == [0.5, 0.5]
    np.testing.assert_array_equal(_embed(str(out)), _embed(minilm_path))
    # the sentence-transformers pooling (mean) and normalisation travelled with the weights
    with Embedder(str(out), device="cpu") as merged:
        assert merged.settings.pooling == "mean" and merged.settings.normalize


def test_zero_one_weights_give_back_each_model(tmp_path: Path, minilm_path: str, noisy_minilm: str) -> None:
    merge_models([minilm_path, noisy_minilm], tmp_path / "first", [1.0, 0.0])
    merge_models([minilm_path, noisy_minilm], tmp_path / "second", [0.0, 1.0])
    np.testing.assert_array_equal(_embed(str(tmp_path / "first")), _embed(minilm_path))
    np.testing.assert_array_equal(_embed(str(tmp_path / "second")), _embed(noisy_minilm))
    assert read_state_dict(str(tmp_path / "second")).keys() == read_state_dict(noisy_minilm).keys()


def test_example_data_weights_prefer_the_lower_loss_model(
    tmp_path: Path, minilm_path: str, noisy_minilm: str, scifact_examples: str
) -> None:
    out = tmp_path / "cocktail"
    weights = merge_models([noisy_minilm, minilm_path], out, example_data=scifact_examples, temperature=1.0)
    info = json.loads((out / "merge_info.json").read_text())
    losses = info["losses"]
    assert info["kind"] == "embedder"
    assert losses[1] < losses[0]  # the real model fits SciFact claims better than the noisy one
    assert weights[1] > weights[0]
    expected = torch.softmax(-torch.tensor(losses, dtype=torch.float64) / 1.0, dim=0).tolist()
    assert weights == pytest.approx(expected, abs=1e-12)
    # and the saved weights are that average
    a, b, merged = read_state_dict(noisy_minilm), read_state_dict(minilm_path), read_state_dict(str(out))
    key = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged[key], weights[0] * a[key] + weights[1] * b[key], rtol=1e-5, atol=1e-6)


def test_weights_not_summing_to_one_are_normalised_with_a_warning(tmp_path: Path, tiny_bert_dir: str) -> None:
    other = perturbed_copy(tiny_bert_dir, tmp_path / "other", scale=1.0)
    with pytest.warns(UserWarning, match="normalising"):
        weights = merge_models([tiny_bert_dir, other], tmp_path / "out", [1.0, 3.0])
    assert weights == [0.25, 0.75]
    a, b, merged = (
        read_state_dict(tiny_bert_dir),
        read_state_dict(other),
        read_state_dict(str(tmp_path / "out")),
    )
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key], rtol=1e-6, atol=1e-6)


def test_mismatched_shapes_name_the_first_tensor(tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    small = build_bert_cross_encoder(
        tmp_path / "h32", minilm_tokenizer_dir, hidden=32, initializer_range=0.02
    )
    wide = build_bert_cross_encoder(tmp_path / "h64", minilm_tokenizer_dir, hidden=64, initializer_range=0.02)
    with pytest.raises(
        ConfigError,
        match=r"tensor 'bert\.embeddings\.LayerNorm\.bias' has shape \[32\] in .*h32 but \[64\] in .*h64",
    ):
        merge_models([small, wide], tmp_path / "out", [0.5, 0.5])
    assert not (tmp_path / "out").exists()


def test_different_architectures_are_refused(
    tmp_path: Path, tiny_bert_dir: str, minilm_tokenizer_dir: str
) -> None:
    cross = build_bert_cross_encoder(tmp_path / "ce", minilm_tokenizer_dir, initializer_range=0.02)
    with pytest.raises(ConfigError, match=r"tensor '(bert\.)?embeddings\..*' is in"):
        merge_models([tiny_bert_dir, cross], tmp_path / "out", [0.5, 0.5])


def test_bad_arguments(tmp_path: Path, tiny_bert_dir: str) -> None:
    with pytest.raises(ConfigError, match="at least two models"):
        merge_models([tiny_bert_dir], tmp_path / "o")
    with pytest.raises(ConfigError, match="3 weight"):
        normalize_weights([0.2, 0.3, 0.5], 2)
    with pytest.raises(ConfigError, match=r"weights\[1\]"):
        normalize_weights([1.0, -1.0], 2)
    with pytest.raises(ConfigError, match="either weights or example_data"):
        merge_models([tiny_bert_dir, tiny_bert_dir], tmp_path / "o", [0.5, 0.5], example_data="x.jsonl")
    with pytest.raises(ModelLoadError, match="does not exist"):
        merge_models([tiny_bert_dir, str(tmp_path / "missing")], tmp_path / "o")
    merge_models([tiny_bert_dir, tiny_bert_dir], tmp_path / "o")
    with pytest.raises(ConfigError, match="already exists"):
        merge_models([tiny_bert_dir, tiny_bert_dir], tmp_path / "o")
    merge_models([tiny_bert_dir, tiny_bert_dir], tmp_path / "o", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


def test_bad_example_data_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "pos": ["p"], "neg": []}\n{"query": "q", "pos": []}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: field 'pos' is empty"):
        read_examples(str(path))
    path.write_text('{"query": 3, "pos": ["p"]}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: field 'query'"):
        read_examples(str(path))


def test_merge_state_dicts_and_weight_formula() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.arange(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "ids": torch.arange(3)}
    merged = merge_state_dicts([a, b], [0.75, 0.25])
    assert merged["w"].tolist() == [1.5, 3.0] and merged["ids"].tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="'w' is in A but not in B"):
        check_same_tensors(a, {"ids": torch.arange(3)}, "A", "B")
    with pytest.raises(ConfigError, match="non-float tensor 'ids' differs"):
        merge_state_dicts([a, {"w": b["w"], "ids": torch.arange(1, 4)}], [0.5, 0.5])
    losses = [0.3, 1.2, 0.7]
    weights = cocktail_weights(losses, temperature=0.5)
    expected = np.exp(-np.array(losses) / 0.5) / np.exp(-np.array(losses) / 0.5).sum()
    np.testing.assert_allclose(weights, expected, rtol=1e-12)


@pytest.fixture(scope="module")
def tiny_cross_encoders(
    tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str
) -> tuple[str, str]:
    """Two tiny cross-encoders of the same architecture with clearly different scores."""
    root = tmp_path_factory.mktemp("ce")
    first = build_bert_cross_encoder(root / "a", minilm_tokenizer_dir, seed=0, initializer_range=0.02)
    return first, perturbed_copy(first, root / "b", scale=2.0, seed=3)


def _rerank(path: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    from bgekit import Reranker

    return np.asarray(Reranker(path, device="cpu", show_progress=False).compute_score(pairs))


PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[0], TEXTS[2]), (TEXTS[2], TEXTS[1])]


def test_rerankers_self_merge_and_zero_one_weights(
    tmp_path: Path, tiny_cross_encoders: tuple[str, str]
) -> None:
    a, b = tiny_cross_encoders
    merge_models([a, a], tmp_path / "self", [0.5, 0.5])
    np.testing.assert_array_equal(_rerank(str(tmp_path / "self"), PAIRS), _rerank(a, PAIRS))
    merge_models([a, b], tmp_path / "b", [0.0, 1.0])
    np.testing.assert_array_equal(_rerank(str(tmp_path / "b"), PAIRS), _rerank(b, PAIRS))
    assert not np.allclose(_rerank(a, PAIRS), _rerank(b, PAIRS))


def test_reranker_example_weights_follow_the_grouped_loss(
    tmp_path: Path, tiny_cross_encoders: tuple[str, str], scifact_examples: str
) -> None:
    from bgekit.finetune.merge import read_examples, reranker_example_loss

    a, b = tiny_cross_encoders
    out = tmp_path / "cocktail"
    weights = merge_models([a, b], out, example_data=scifact_examples, temperature=0.1)
    info = json.loads((out / "merge_info.json").read_text())
    assert info["kind"] == "reranker"
    losses = info["losses"]
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)
    assert (weights[0] > weights[1]) == (losses[0] < losses[1])  # the lower-loss model gets more weight
    # the loss is the grouped cross-entropy of the reranker's own scores, written out here
    examples = read_examples(scifact_examples)
    scores = _rerank(a, [(e["query"], p) for e in examples for p in e["pos"][:1] + e["neg"][:7]])
    by_hand, start = [], 0
    for e in examples:
        group = scores[start : start + 1 + len(e["neg"][:7])]
        start += len(group)
        by_hand.append(-(group[0] - np.log(np.exp(group).sum())))
    assert reranker_example_loss(a, examples) == pytest.approx(float(np.mean(by_hand)), rel=1e-5)
    assert losses[0] == pytest.approx(float(np.mean(by_hand)), rel=1e-5)


@pytest.fixture(scope="module")
def finetuned_minilm(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """MiniLM after a few steps of bgekit fine-tuning: a newer save, without the stored position_ids."""
    from bgekit.finetune.arguments import DataArguments, EmbedderTrainingArguments, ModelArguments
    from bgekit.finetune.embedder import train

    root = tmp_path_factory.mktemp("finetuned-minilm")
    data = write_jsonl(root / "train.jsonl", toy_rows(4, 2))
    out = root / "out"
    args = EmbedderTrainingArguments(
        str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4, report_to="none",
        use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    train(ModelArguments(minilm_path), DataArguments([data], train_group_size=2, passage_max_len=32), args)
    return str(out)


def test_merging_the_shipped_minilm_with_a_model_finetuned_from_it(
    tmp_path: Path, minilm_path: str, finetuned_minilm: str
) -> None:
    # the LM-Cocktail recipe: the shipped checkpoint stores the non-persistent buffer
    # embeddings.position_ids, the fine-tuned save does not; merging compares parameters only
    assert "embeddings.position_ids" in read_state_dict(minilm_path)
    assert "embeddings.position_ids" not in read_state_dict(finetuned_minilm)
    out = tmp_path / "merged"
    code = cli_main(
        ["merge", "--models", minilm_path, finetuned_minilm, "--weights", "0.5", "0.5", "--output", str(out)]
    )
    assert code == 0
    a, b, merged = read_state_dict(minilm_path), read_state_dict(finetuned_minilm), read_state_dict(str(out))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], b[key])  # fine-tuning moved the weights
    torch.testing.assert_close(merged[key], 0.5 * a[key] + 0.5 * b[key], rtol=1e-6, atol=1e-7)
    assert set(merged) == set(a)  # every parameter, and the first model's saved buffer

    # and the merged model works: each query finds its own document among the texts
    queries = ["bioactive materials", "stem cell tracking", "a bear from China"]
    with Embedder(str(out), device="cpu", show_progress=False) as model:
        scores = model.encode_queries(queries) @ model.encode_corpus(TEXTS).T
    assert np.isfinite(scores).all()
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(_embed(str(out)), axis=1), 1.0, rtol=1e-5)
