"""LoRA training of a tiny decoder-only embedder: last-token pooling from its kind, loss down, reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError
from bgekit.finetune.embedder import parse_args, train


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id, max_position_embeddings=128,
    )  # fmt: skip
    LlamaModel(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def run(model: str, data: str, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    argv = [
        "--model_name_or_path", model, "--train_data", data, "--output_dir", str(out), "--use_lora",
        "--lora_rank", "4", "--lora_alpha", "8", "--lora_dropout", "0.0", "--per_device_train_batch_size", "4",
        "--train_group_size", "3", "--query_max_len", "16", "--passage_max_len", "16", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--seed", "0", "--disable_tqdm", "true",
        "--temperature", "0.1", *extra,
    ]  # fmt: skip
    return train(*parse_args(argv))


def test_lora_decoder_training(tiny_llama: str, toy_train_file: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = run(tiny_llama, toy_train_file, out, "--num_train_epochs", "8", "--learning_rate", "5e-3")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert (out / "lora_adapter" / "adapter_config.json").is_file()
    model = Embedder(str(out), device="cpu", dtype="fp32")
    assert model.settings.kind == "decoder" and model.settings.pooling == "last_token"
    base = Embedder(tiny_llama, device="cpu", dtype="fp32")
    a, b = model.encode_queries(["what is apple?"]), base.encode_queries(["what is apple?"])
    assert a.shape == (1, 32) and not np.allclose(a, b)
    # the adapter alone also loads, on top of the base model
    adapted = Embedder(tiny_llama, device="cpu", dtype="fp32", adapter=str(out / "lora_adapter"))
    assert not np.allclose(adapted.encode_queries(["what is apple?"]), b)


def test_lora_target_modules_must_exist(tiny_llama: str, toy_train_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="match no module"):
        run(tiny_llama, toy_train_file, tmp_path / "o", "--max_steps", "1", "--target_modules", "nope")
