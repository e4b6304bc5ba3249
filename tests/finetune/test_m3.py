"""BGE-M3 unified fine-tuning on a tiny fixture: loss down, heads saved as BGE does, reload as kind m3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import Embedder
from bgekit.errors import ConfigError
from bgekit.finetune import losses
from bgekit.finetune.embedder import parse_args, train


def run(model: str, data: str, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    argv = [
        "--model_name_or_path", model, "--train_data", data, "--output_dir", str(out), "--unified_finetuning",
        "--per_device_train_batch_size", "4", "--train_group_size", "3", "--query_max_len", "16",
        "--passage_max_len", "16", "--logging_steps", "1", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--seed", "0", "--disable_tqdm", "true", "--temperature", "0.1", *extra,
    ]  # fmt: skip
    return train(*parse_args(argv))


def test_unified_finetuning_trains_and_saves_m3_layout(
    tiny_bert_dir: str, toy_train_file: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    trainer = run(
        tiny_bert_dir,
        toy_train_file,
        out,
        "--num_train_epochs",
        "8",
        "--learning_rate",
        "1e-3",
        "--use_self_distill",
    )
    losses_seen = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert np.mean(losses_seen[-4:]) < np.mean(losses_seen[:4])
    assert (out / "sparse_linear.pt").is_file() and (out / "colbert_linear.pt").is_file()
    model = Embedder(str(out), device="cpu")
    assert model.settings.kind == "m3"
    result = model.encode(["what is apple?"], return_sparse=True, return_colbert_vecs=True)
    assert result["dense_vecs"].shape == (1, 32)
    assert len(result["lexical_weights"]) == 1 and len(result["colbert_vecs"][0]) > 0


def test_fix_encoder_trains_only_the_heads(tiny_bert_dir: str, toy_train_file: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "fixed"
    run(tiny_bert_dir, toy_train_file, out, "--max_steps", "3", "--learning_rate", "1e-2", "--fix_encoder")
    before, after = load_file(f"{tiny_bert_dir}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k in after)
    heads = torch.load(out / "sparse_linear.pt", weights_only=True)
    assert heads["weight"].shape == (1, 32)


def test_m3_options_need_unified(tiny_bert_dir: str, toy_train_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need --unified_finetuning"):
        train(*parse_args(["--model_name_or_path", tiny_bert_dir, "--train_data", toy_train_file,
                           "--output_dir", str(tmp_path), "--fix_encoder", "--use_cpu"]))  # fmt: skip


def test_sparse_and_colbert_scores_match_formula() -> None:
    weights = torch.tensor([[0.5, 2.0, 1.0, 0.0], [0.3, 0.0, 0.7, 0.2]])
    ids = torch.tensor([[1, 2, 1, 0], [3, 0, 3, 2]])
    vec = losses.sparse_vectors(weights, ids, 5, torch.tensor([0]))
    expected = torch.zeros(2, 5)
    for b in range(2):
        for i in range(4):
            t = int(ids[b, i])
            if t != 0:
                expected[b, t] = max(float(expected[b, t]), float(weights[b, i]))
    assert torch.equal(vec, expected)

    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(2, 3, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
    q_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    q = q * q_mask.unsqueeze(-1)
    got = losses.colbert_scores(q, p, q_mask)
    for a in range(2):
        for b in range(3):
            total = sum(max(float(q[a, i] @ p[b, j]) for j in range(5)) for i in range(3) if q_mask[a, i])
            assert float(got[a, b]) == pytest.approx(total / int(q_mask[a].sum()), rel=1e-5)


def test_m3_unified_loss_matches_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    d, s, c = (torch.randn(2, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    e = d + 0.3 * s + c

    def ce(x: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(x, torch.tensor([0, 3])))

    unified = (ce(d) + ce(e) + 0.1 * ce(s) + ce(c)) / 4
    assert float(losses.m3_unified_loss(d, s, c, 3)) == pytest.approx(unified, rel=1e-9)
    t = torch.softmax(e, dim=-1)

    def kd(x: torch.Tensor) -> float:
        return float(-(t * torch.log_softmax(x, dim=-1)).sum(-1).mean())

    distilled = (unified + (kd(d) + 0.1 * kd(s) + kd(c)) / 3) / 2
    assert float(losses.m3_unified_loss(d, s, c, 3, self_distill=True)) == pytest.approx(distilled, rel=1e-9)
