"""The output folder of a run: no accidental overwrite, a staged final save, resume past a torn checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError
from bgekit.finetune.embedder import main, parse_args, train
from bgekit.finetune.output import STAGING_DIR, checkpoint_problem


def run(model: str, data: str, out: Path, *extra: str) -> object:
    argv = [
        "--model_name_or_path", model, "--train_data", data, "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--train_group_size", "3", "--query_max_len", "16",
        "--passage_max_len", "16", "--report_to", "none", "--use_cpu", "--seed", "0",
        "--disable_tqdm", "true", "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip
    return train(*parse_args(argv))


def test_a_trained_model_is_not_overwritten_by_accident(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    run(tiny_bert_dir, toy_train_file, out, "--max_steps", "1", "--save_strategy", "no")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"--output_dir .*out is not empty \(it holds .*model\.safetensors"):
        run(tiny_bert_dir, toy_train_file, out, "--max_steps", "2", "--save_strategy", "no")
    assert (out / "model.safetensors").read_bytes() == before
    argv = ["--model_name_or_path", tiny_bert_dir, "--train_data", toy_train_file, "--output_dir", str(out)]
    assert main([*argv, "--max_steps", "1", "--report_to", "none", "--use_cpu"]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    # asked for: trained again, and replaced
    trainer = run(
        tiny_bert_dir,
        toy_train_file,
        out,
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        "--overwrite_output_dir",
    )
    assert trainer.state.global_step == 2  # type: ignore[attr-defined]
    assert (out / "model.safetensors").read_bytes() != before
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert not (out / STAGING_DIR).exists()
    # an empty folder (made beforehand) is fine
    (tmp_path / "empty").mkdir()
    run(tiny_bert_dir, toy_train_file, tmp_path / "empty", "--max_steps", "1", "--save_strategy", "no")


def test_a_failed_final_save_leaves_the_previous_model_whole(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    run(tiny_bert_dir, toy_train_file, out, "--max_steps", "1", "--save_strategy", "no")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    import transformers.modeling_utils

    def disk_full(state: object, filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).write_bytes(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(
            tiny_bert_dir, toy_train_file, out, "--max_steps", "2", "--save_strategy", "no",
            "--overwrite_output_dir",
        )  # fmt: skip
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    vectors = Embedder(str(out), device="cpu").encode_queries(["what is apple?"])
    assert np.isfinite(vectors).all()


def test_resume_last_skips_a_checkpoint_a_crash_left_incomplete(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = ("--save_strategy", "steps", "--save_steps", "1", "--data_seed", "0")
    full = tmp_path / "full"
    run(tiny_bert_dir, toy_train_file, full, "--max_steps", "3", *common)

    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-2", part / "checkpoint-2")
    # killed while writing checkpoint-3: weights cut short, no trainer_state.json yet
    torn = part / "checkpoint-3"
    shutil.copytree(full / "checkpoint-3", torn)
    (torn / "trainer_state.json").unlink()
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert (
        checkpoint_problem(str(torn)) is not None and checkpoint_problem(str(part / "checkpoint-2")) is None
    )

    with caplog.at_level(logging.WARNING, logger="bgekit.finetune.output"):
        trainer = run(
            tiny_bert_dir,
            toy_train_file,
            part,
            "--max_steps",
            "3",
            *common,
            "--resume_from_checkpoint",
            "last",
        )
    assert any("skipping" in r.message and "checkpoint-3" in r.message for r in caplog.records)
    assert trainer.state.global_step == 3  # type: ignore[attr-defined]
    queries = ["what is apple?", "kilo"]
    a = Embedder(str(full), device="cpu").encode_queries(queries)
    b = Embedder(str(part), device="cpu").encode_queries(queries)
    np.testing.assert_allclose(a, b, atol=1e-5)  # resumed from step 2: the same model as the full run


def test_an_incomplete_checkpoint_given_by_path_is_refused(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path
) -> None:
    torn = tmp_path / "out" / "checkpoint-5"
    torn.mkdir(parents=True)
    (torn / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(
        ConfigError, match=r"checkpoint-5: incomplete checkpoint \(trainer_state\.json is not"
    ):
        run(tiny_bert_dir, toy_train_file, tmp_path / "out", "--resume_from_checkpoint", str(torn))
