"""Helpers for the reranker fine-tuning and merging tests: tiny models saved as users would find them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def build_tiny_cross_encoder(
    folder: Path | str, tokenizer_dir: str, *, seed: int = 0, hidden: int = 32
) -> str:
    """A tiny random BERT cross-encoder (``num_labels=1``) with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        num_labels=1,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def perturbed_copy(source: str, target: Path | str, *, scale: float, seed: int = 0) -> str:
    """Copy a model folder, adding Gaussian noise of relative size ``scale`` to every float tensor."""
    from safetensors.torch import save_file

    from bgekit.finetune.merge import _companion_files, read_state_dict

    os.makedirs(target, exist_ok=True)
    for name in _companion_files(source):
        src = os.path.join(source, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(target, name))
        else:
            shutil.copy2(src, os.path.join(target, name))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in read_state_dict(source).items():
        if tensor.is_floating_point():
            noise = (
                torch.randn(tensor.shape, generator=generator)
                * scale
                * float(tensor.float().std().nan_to_num(0.02))
            )
            tensor = (tensor.float() + noise).to(tensor.dtype)
        state[key] = tensor.contiguous()
    save_file(state, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    return str(target)
