"""torchrun with 2 CPU processes (gloo): cross-device negatives equal one process on the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from . import dist_worker
from .launch import torchrun

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_cross_device_loss_and_gradients_equal_single_process(no_dropout_bert: str, tmp_path: Path) -> None:
    out = tmp_path / "dist.pt"
    proc = torchrun(str(HERE / "dist_worker.py"), no_dropout_bert, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = torch.load(out)

    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(no_dropout_bert)
    model = AutoModel.from_pretrained(no_dropout_bert)
    for label, teacher in (("plain", None), ("kd", dist_worker.TEACHER)):
        model.zero_grad()
        loss = dist_worker.loss_and_grads(
            model, tokenizer, dist_worker.QUERIES, dist_worker.PASSAGES, teacher, False
        )
        assert distributed[label]["loss"] == pytest.approx(float(loss), abs=1e-5)
        grads = distributed[label]["grads"]
        assert len(grads) > 10
        for name, param in model.named_parameters():
            if name in grads:
                torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_torchrun_entry_point_with_cross_device_negatives(
    no_dropout_bert: str, tmp_path: Path, toy_train_file: str
) -> None:
    out = tmp_path / "out"
    proc = torchrun(
        "-m", "bgekit.finetune.embedder", "--model_name_or_path", no_dropout_bert, "--train_data", toy_train_file,
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--train_group_size", "3", "--negatives_cross_device", "--knowledge_distillation",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--logging_steps", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from bgekit import Embedder

    assert Embedder(str(out), device="cpu").encode_queries(["x"]).shape == (1, 32)
