"""``torchrun --nproc_per_node 2`` (gloo, CPU) reranker training equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import build_tiny_body


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _log(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def _summary(out: Path) -> dict:
    state = json.loads((out / "trainer_state.json").read_text())
    return next(entry for entry in state["log_history"] if "train_loss" in entry)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(
    tmp_path: Path, minilm_tokenizer_dir: str, shared_data: Path
) -> None:
    if shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("torchrun not installed beside this Python")
    body = build_tiny_body(tmp_path / "body", minilm_tokenizer_dir)
    source = shared_data / "finetune" / "flagembedding-examples" / "reranker_normal_examples.jsonl"
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8"
    )
    common = [
        "--model_name_or_path", body, "--train_data", str(data), "--train_group_size", "4",
        "--query_max_len", "16", "--passage_max_len", "32", "--num_train_epochs", "2",
        "--logging_steps", "1", "--learning_rate", "5e-2", "--report_to", "none", "--save_strategy", "no",
        "--use_cpu", "--seed", "3", "--disable_tqdm", "true", "--knowledge_distillation",
    ]  # fmt: skip
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    _run(
        [torchrun, "--nproc_per_node", "2", "-m", "bgekit.finetune.reranker", *common,
         "--output_dir", str(tmp_path / "ddp"), "--per_device_train_batch_size", "2", "--ddp_backend", "gloo"],
        tmp_path,
    )  # fmt: skip
    _run(
        [sys.executable, "-m", "bgekit.finetune.reranker", *common,
         "--output_dir", str(tmp_path / "single"), "--per_device_train_batch_size", "4"],
        tmp_path,
    )  # fmt: skip
    ddp, single = _log(tmp_path / "ddp"), _log(tmp_path / "single")
    assert len(ddp) == len(single) == 4  # 8 groups, global batch 4, two epochs
    for a, b in zip(ddp, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-4)  # the Trainer logs 4 decimals
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-2)  # all-reduce order: float noise
    assert single[-1]["loss"] < single[0]["loss"]
    mean_loss = [_summary(tmp_path / name)["train_loss"] for name in ("ddp", "single")]
    assert mean_loss[0] == pytest.approx(mean_loss[1], rel=1e-5)  # unrounded mean over the run
    # weights are not compared element-wise: Adam turns float noise in near-zero gradients (all-reduce
    # order) into updates of size ~lr, so a few elements differ while losses and gradients agree
