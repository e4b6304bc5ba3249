"""Reranker fine-tuning on tiny fixtures: cross-encoders from an encoder body, distillation, resume,
LLM rerankers with LoRA and layer-wise rerankers; every trained model reloads through ``Reranker``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bgekit import Reranker
from bgekit.errors import ConfigError, DataFormatError
from bgekit.finetune.data import Group
from bgekit.finetune.merge import read_state_dict
from bgekit.finetune.reranker import (
    PairGroup,
    RerankerTrainer,
    build_trainer,
    parse_args,
    train,
    yes_token_id,
)
from bgekit.finetune.reranker_losses import reranker_loss
from tests.builders import build_bpe_tokenizer, build_decoder, build_tiny_body

EXAMPLES = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "finetune" / "flagembedding-examples"
)
GROUP = 4


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> str:
    """Four real FlagEmbedding reranker examples (with teacher scores), three negatives each."""
    source = shared_data / "finetune" / "flagembedding-examples" / "reranker_normal_examples.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[:4]]
    path = tmp_path_factory.mktemp("rr-data") / "train.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            row = {
                "query": row["query"],
                "pos": row["pos"][:1],
                "neg": row["neg"][:3],
                "pos_scores": row["pos_scores"][:1],
                "neg_scores": row["neg_scores"][:3],
            }
            handle.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def encoder_body(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny BERT *body* (``BertModel``, no head), without dropout so runs are comparable."""
    return build_tiny_body(tmp_path_factory.mktemp("body"), minilm_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, scifact_corpus: list[dict]) -> str:
    tokenizer = build_bpe_tokenizer(
        [d["title"] + " " + d["text"] for d in scifact_corpus[:400]], vocab_size=1500
    )
    return build_decoder(
        tmp_path_factory.mktemp("llama"),
        "llama",
        tokenizer,
        initializer_range=0.02,
        max_position_embeddings=1024,
    )


def _argv(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_data",
        data,
        "--output_dir",
        str(out),
        "--train_group_size",
        str(GROUP),
        "--query_max_len",
        "24",
        "--passage_max_len",
        "48",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "--seed",
        "7",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def _losses(trainer: RerankerTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _groups(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(row["query"], passage) for row in rows for passage in row["pos"][:1] + row["neg"][:3]]


def _training_scores(trainer: RerankerTrainer, rows: list[dict[str, Any]]) -> np.ndarray:
    """Scores of the in-memory trained model, through the training collator (pairs as in training)."""
    items = [PairGroup(Group(row["query"], row["pos"][:1] + row["neg"][:3])) for row in rows]
    batch = trainer.data_collator(items)
    model = trainer.model.eval()
    with torch.no_grad():
        return trainer.pair_scores(model, batch["pairs"]).numpy()


@pytest.mark.slow
def test_cross_encoder_from_encoder_body_trains_and_reloads(
    tmp_path: Path, encoder_body: str, train_file: str
) -> None:
    out = tmp_path / "ce"
    trainer = train(
        *parse_args(_argv(encoder_body, train_file, out, "--max_steps", "8", "--learning_rate", "1e-2"))
    )
    losses = _losses(trainer)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert losses[0] == pytest.approx(np.log(GROUP), abs=0.05)  # a fresh head scores all passages alike
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    saved = json.loads((out / "bgekit.json").read_text())["reranker"]
    assert saved["kind"] == "cross-encoder" and saved["query_max_length"] == 24
    rows = _groups(train_file)
    before = _training_scores(trainer, rows)
    reranker = Reranker(str(out), device="cpu")
    after = np.asarray(reranker.compute_score(_pairs(rows)), dtype=np.float32)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    # trained: each positive now beats its own negatives more often than chance
    grouped = after.reshape(-1, GROUP)
    assert (grouped[:, 0] > grouped[:, 1:].max(axis=1)).mean() >= 0.5


def test_knowledge_distillation_adds_soft_label_term(
    tmp_path: Path, encoder_body: str, train_file: str
) -> None:
    argv = _argv(encoder_body, train_file, tmp_path / "kd", "--knowledge_distillation", "--kd_weight", "0.5")
    trainer = build_trainer(*parse_args(argv))
    rows = _groups(train_file)
    items = [
        PairGroup(Group(r["query"], r["pos"] + r["neg"], r["pos_scores"] + r["neg_scores"])) for r in rows
    ]
    batch = trainer.data_collator(items)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model.eval(), batch)
        scores = trainer.pair_scores(trainer.model, batch["pairs"]).view(-1, GROUP)
    expected = reranker_loss(scores, batch["teacher_scores"], kd_weight=0.5)
    torch.testing.assert_close(loss, expected)
    assert float(expected) > float(reranker_loss(scores))


def test_bad_training_data_names_file_and_line(tmp_path: Path, encoder_body: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [0.5, 0.1]}\n'
    )
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: field 'neg_scores' has 2 scores"):
        build_trainer(*parse_args(_argv(encoder_body, str(bad), tmp_path / "o", "--knowledge_distillation")))
    with pytest.raises(ConfigError, match="--use_lora is for LLM rerankers"):
        build_trainer(*parse_args(_argv(encoder_body, str(bad), tmp_path / "o", "--use_lora")))
    with pytest.raises(ConfigError, match="no room for the passage"):
        build_trainer(*parse_args(_argv(encoder_body, str(bad), tmp_path / "o", "--max_len", "20")))


@pytest.mark.slow
def test_resume_from_checkpoint_ends_with_the_same_model(
    tmp_path: Path, encoder_body: str, train_file: str
) -> None:
    common = ("--max_steps", "4", "--learning_rate", "3e-3", "--save_strategy", "steps", "--save_steps", "2")
    full = tmp_path / "full"
    train(*parse_args(_argv(encoder_body, train_file, full, *common)))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after step 2
    trainer = train(
        *parse_args(_argv(encoder_body, train_file, resumed, *common, "--resume_from_checkpoint", "true"))
    )
    assert trainer.state.global_step == 4
    a, b = read_state_dict(str(full)), read_state_dict(str(resumed))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_llm_reranker_lora_trains_and_reloads(tmp_path: Path, tiny_llama: str, train_file: str) -> None:
    out = tmp_path / "llm"
    extra = (
        "--max_steps",
        "6",
        "--learning_rate",
        "1e-2",
        "--use_lora",
        "--lora_rank",
        "8",
        "--save_merged_lora_model",
    )
    trainer = train(*parse_args(_argv(tiny_llama, train_file, out, *extra)))
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    assert (out / "adapter_config.json").is_file() and (out / "merged_model" / "model.safetensors").is_file()
    assert trainer.yes_id == yes_token_id(trainer.processing_class)
    rows = _groups(train_file)
    before = _training_scores(trainer, rows)
    merged = Reranker(str(out / "merged_model"), device="cpu")
    assert merged.kind == "llm" and merged.yes_token_id == trainer.yes_id
    after = np.asarray(merged.compute_score(_pairs(rows)), dtype=np.float32)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4)
    # the adapter alone, on its base model, with the saved settings
    saved = json.loads((out / "bgekit.json").read_text())["reranker"]
    with_adapter = Reranker(
        tiny_llama, device="cpu", peft_path=str(out), **{k: v for k, v in saved.items() if v is not None}
    )
    np.testing.assert_allclose(
        np.asarray(with_adapter.compute_score(_pairs(rows))), before, rtol=0, atol=1e-4
    )


@pytest.mark.slow
def test_layerwise_reranker_trains_and_reloads(tmp_path: Path, tiny_llama: str, train_file: str) -> None:
    out = tmp_path / "layerwise"
    extra = (
        "--max_steps",
        "6",
        "--learning_rate",
        "3e-3",
        "--model_type",
        "layerwise",
        "--cutoff_layers",
        "2",
        "3",
    )
    trainer = train(*parse_args(_argv(tiny_llama, train_file, out, *extra)))
    losses = _losses(trainer)
    assert losses[-1] < losses[0]
    rows = _groups(train_file)
    before = _training_scores(trainer, rows)  # (pairs, 2 layers)
    assert before.shape == (len(rows) * GROUP, 2)
    reranker = Reranker(str(out), device="cpu")
    assert reranker.kind == "layerwise" and reranker.settings.cutoff_layers == [2, 3]
    after = np.asarray(reranker.compute_score(_pairs(rows)), dtype=np.float32)
    assert after.shape == (2, len(rows) * GROUP)  # one list of scores per cutoff layer
    np.testing.assert_allclose(after.T, before, rtol=0, atol=1e-4)


def test_evaluation_on_held_out_groups(tmp_path: Path, encoder_body: str, train_file: str) -> None:
    argv = _argv(
        encoder_body,
        train_file,
        tmp_path / "ev",
        "--eval_data",
        train_file,
        "--per_device_eval_batch_size",
        "2",
    )
    trainer = build_trainer(*parse_args(argv))
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_mrr", "eval_top1"} <= set(metrics)
    assert 1 / GROUP <= metrics["eval_mrr"] <= 1.0
    # the same numbers by hand from the model's scores of each group (positive first)
    items = [PairGroup(Group(r["query"], r["pos"][:1] + r["neg"][:3])) for r in _groups(train_file)]
    with torch.no_grad():
        scores = trainer.pair_scores(trainer.model.eval(), trainer.data_collator(items)["pairs"]).view(
            -1, GROUP
        )
    ranks = 1 + (scores[:, 1:] > scores[:, :1]).sum(dim=1).float()
    assert metrics["eval_mrr"] == pytest.approx(float((1 / ranks).mean()), abs=1e-6)
