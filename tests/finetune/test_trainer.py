"""The trainer on tiny fixtures: loss goes down, outputs load through bgekit.Embedder, options run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError
from bgekit.finetune.embedder import parse_args, train


def run_training(model: str, data: str, out: Path, *extra: str) -> object:
    argv = [
        "--model_name_or_path", model, "--train_data", data, "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--train_group_size", "3", "--query_max_len", "16",
        "--passage_max_len", "16", "--logging_steps", "1", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--seed", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip
    return train(*parse_args(argv))


def losses_of(trainer: object) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]  # type: ignore[attr-defined]


def test_training_lowers_loss_and_saves_loadable_model(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    trainer = run_training(
        tiny_bert_dir, toy_train_file, out, "--num_train_epochs", "8", "--learning_rate", "1e-3",
        "--sentence_pooling_method", "mean", "--temperature", "0.1",
    )  # fmt: skip
    losses = losses_of(trainer)
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    model = Embedder(str(out), device="cpu")
    assert model.settings.pooling == "mean" and model.settings_origin["pooling"] == "bgekit.json"
    vectors = model.encode_queries(["what is apple?"])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    # the base model gives different vectors: the weights were trained and saved
    assert not np.allclose(
        vectors, Embedder(tiny_bert_dir, device="cpu", pooling="mean").encode_queries(["what is apple?"])
    )


@pytest.mark.parametrize(
    "options",
    [
        ["--knowledge_distillation", "--kd_loss_type", "kl_div"],
        ["--knowledge_distillation", "--kd_loss_type", "m3_kd_loss"],
        ["--use_mrl", "--mrl_dims", "8", "16", "32"],
        ["--grad_cache", "--gc_chunk_size", "3"],
        [
            "--same_dataset_within_batch",
            "--query_instruction_for_retrieval",
            "Q: ",
            "--fix_position_embedding",
        ],
    ],
    ids=["kl_div", "m3_kd_loss", "matryoshka", "grad_cache", "same_dataset"],
)
def test_training_options_run(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path, options: list[str]
) -> None:
    trainer = run_training(tiny_bert_dir, toy_train_file, tmp_path / "out", "--max_steps", "2", *options)
    losses = losses_of(trainer)
    assert len(losses) == 2 and all(np.isfinite(losses))
    model = Embedder(str(tmp_path / "out"), device="cpu")
    if "Q: " in options:
        assert model.settings.query_instruction == "Q: "


def test_bad_arguments_are_config_errors(tiny_bert_dir: str, toy_train_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--use_mrl needs --mrl_dims"):
        run_training(tiny_bert_dir, toy_train_file, tmp_path / "o", "--use_mrl")
    with pytest.raises(ConfigError, match="--temperature"):
        run_training(tiny_bert_dir, toy_train_file, tmp_path / "o", "--temperature", "0")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        run_training(
            tiny_bert_dir, toy_train_file, tmp_path / "o", "--resume_from_checkpoint", str(tmp_path / "nope")
        )


def test_evaluation_during_training_is_logged(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path
) -> None:
    import json

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    words = ["apple", "banana", "cherry", "delta", "echo", "golf"]
    (folder / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": f"{w} is a word"}) + "\n"
            for i, w in enumerate(words)
        )
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"what is {w}?"}) + "\n" for i, w in enumerate(words[:3]))
    )
    (folder / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3))
    )
    trainer = run_training(
        tiny_bert_dir, toy_train_file, tmp_path / "out", "--max_steps", "2", "--eval_dataset", str(folder),
        "--eval_steps", "1",
    )  # fmt: skip
    evals = [h for h in trainer.state.log_history if "eval_ndcg_at_10" in h]  # type: ignore[attr-defined]
    assert len(evals) == 2 and all(0.0 <= h["eval_ndcg_at_10"] <= 1.0 for h in evals)


def test_every_epoch_tells_the_dataset_its_number(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path
) -> None:
    """Under DDP accelerate does not call ``dataset.set_epoch``; the trainer's callback does, always."""
    from bgekit.finetune.trainer import EpochSeedCallback

    trainer = run_training(tiny_bert_dir, toy_train_file, tmp_path / "out", "--num_train_epochs", "3")
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, EpochSeedCallback)]  # type: ignore[attr-defined]
    assert len(callbacks) == 1
    assert trainer.train_dataset.epoch == 2  # type: ignore[attr-defined]
