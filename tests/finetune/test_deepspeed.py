"""DeepSpeed ZeRO-2 through the HF Trainer: 2 CPU processes train exactly as plain DDP does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .launch import torchrun

pytest.importorskip("deepspeed", reason="deepspeed is a pinned dev dependency (requirements-dev.txt)")


def _train(model: str, data: str, out: Path, extra: list[str]) -> list[float]:
    proc = torchrun(
        "-m", "bgekit.finetune.embedder", "--model_name_or_path", model, "--train_data", data,
        "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "2",
        "--train_group_size", "3", "--negatives_cross_device", "--learning_rate", "1e-3",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0",
        *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [float(entry["loss"]) for entry in history if "loss" in entry]
    assert len(losses) == 3, history
    return losses


@pytest.mark.slow
def test_zero2_equals_ddp(no_dropout_bert: str, tmp_path: Path, toy_train_file: str) -> None:
    config = tmp_path / "ds_zero2.json"
    config.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "zero_optimization": {"stage": 2},
            }
        )
    )
    ddp = _train(no_dropout_bert, toy_train_file, tmp_path / "ddp", [])
    zero = _train(no_dropout_bert, toy_train_file, tmp_path / "zero2", ["--deepspeed", str(config)])
    assert zero == pytest.approx(ddp, abs=1e-4)

    before = load_file(str(Path(no_dropout_bert) / "model.safetensors"))
    ddp_weights = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    zero_weights = load_file(str(tmp_path / "zero2" / "model.safetensors"))
    assert set(zero_weights) == set(ddp_weights)
    moved = 0
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(zero_weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
        moved += int(not torch.equal(tensor, before[name]))
    assert moved > 10  # the runs trained, they did not both leave the weights alone

    from bgekit import Embedder

    assert Embedder(str(tmp_path / "zero2"), device="cpu").encode_queries(["x"]).shape == (1, 32)
