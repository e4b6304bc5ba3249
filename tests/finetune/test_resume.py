"""A run killed mid-way resumes from its last checkpoint and ends like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# the entry point, slowed by a callback so the kill lands mid-run whatever the machine's speed
SLOW_MAIN = """
import sys, time
from transformers import TrainerCallback
import bgekit.finetune.embedder as entry

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(sys.argv[1]))

build = entry.build_trainer
def slow_build(*args):
    trainer = build(*args)
    trainer.add_callback(Slow())
    return trainer
entry.build_trainer = slow_build
sys.exit(entry.main(sys.argv[2:]))
"""


def command(script: Path, sleep: float, model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(script), str(sleep), "--model_name_or_path", model, "--train_data", data,
        "--output_dir", str(out), "--max_steps", "8", "--save_steps", "2", "--per_device_train_batch_size", "2",
        "--train_group_size", "3", "--report_to", "none", "--use_cpu", "--seed", "0", "--logging_steps", "1",
        "--disable_tqdm", "true", "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip


def final_step(out: Path) -> int:
    return int(json.loads((out / "trainer_state.json").read_text())["global_step"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL])  # SIGTERM ends the process the same way
def test_killed_run_resumes_to_the_same_step_count(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path, sig: signal.Signals
) -> None:
    script = tmp_path / "slow_main.py"
    script.write_text(SLOW_MAIN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    full = tmp_path / "full"
    subprocess.run(
        command(script, 0, tiny_bert_dir, toy_train_file, full), env=env, check=True, capture_output=True
    )

    part = tmp_path / "part"
    proc = subprocess.Popen(
        command(script, 1.0, tiny_bert_dir, toy_train_file, part),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (part / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-4 within 240 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (part / "model.safetensors").is_file(), "the run finished before the kill"
    assert not (part / "checkpoint-8").exists()

    resumed = subprocess.run(
        command(script, 0, tiny_bert_dir, toy_train_file, part, "--resume_from_checkpoint", "true"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_step(part) == final_step(full) == 8

    from bgekit import Embedder

    a = Embedder(str(full), device="cpu").encode_queries(["what is apple?", "kilo"])
    b = Embedder(str(part), device="cpu").encode_queries(["what is apple?", "kilo"])
    # same data order, same sampled negatives, same dropout: the resumed model equals the uninterrupted one
    np.testing.assert_allclose(a, b, atol=1e-5)
