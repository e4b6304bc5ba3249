"""Helpers for the reranker fine-tuning and merging tests: tiny models saved as users would find them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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


def build_tiny_body(folder: Path | str, tokenizer_dir: str, *, seed: int = 0) -> str:
    """A tiny random BERT *body* (``BertModel``, no head, no dropout) with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
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
            spread = float(tensor.float().std()) if tensor.numel() > 1 else 0.02
            noise = torch.randn(tensor.shape, generator=generator) * scale * spread
            tensor = (tensor.float() + noise).to(tensor.dtype)
        state[key] = tensor.contiguous()
    save_file(state, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    return str(target)


def build_bpe_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE (Llama-3 style, with BOS) trained on ``texts``, with "Yes" as one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=1500,
            special_tokens=["<pad>", "<bos>", "<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", model_max_length=4096
    )
    fast.add_tokens(["Yes"])
    return fast


def build_tiny_llama(folder: Path | str, tokenizer: Any, *, seed: int = 0, layers: int = 3) -> str:
    """A tiny random Llama causal LM (no dropout) saved with ``tokenizer``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)
