"""Tiny random M3 and decoder-only checkpoints with real (trained-in-fixture) tokenizers, built once.

Each is saved to disk as a user would find it on the hub (weights, tokenizer files and, for M3, the
``colbert_linear.pt``/``sparse_linear.pt`` heads) and loaded back only through public APIs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCIFACT = (REPO / ".." / "shared" / "data" / "scifact").resolve()


def _training_texts(limit: int = 1500) -> list[str]:
    """Texts to train the fixtures' tokenizers on: SciFact when the shared data is there, else our docs."""
    texts: list[str] = []
    if (SCIFACT / "corpus.jsonl").is_file():
        with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if i >= limit:
                    break
                row = json.loads(line)
                texts.append(f"{row['title']} {row['text']}")
        with open(SCIFACT / "queries.jsonl", encoding="utf-8") as handle:
            texts.extend(json.loads(line)["text"] for line in handle)
    else:  # a checkout outside the workspace: the tiny-model tests still run, on the project's own prose
        for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            texts.extend(p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip())
    # the ICL and instruction templates should tokenize into real pieces, not only characters
    texts += ["<instruct> Given a web search query\n<query> what is it\n<response> an answer"] * 20
    return texts


def train_bpe(specials: list[str], *, byte_level: bool, vocab_size: int = 3000) -> Any:
    """A BPE tokenizer trained on SciFact text: byte-level (GPT/Qwen style) or metaspace (Llama/XLM-R)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_train_bpe_json(tuple(specials), byte_level, vocab_size))


@functools.cache
def _train_bpe_json(specials: tuple[str, ...], byte_level: bool, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=alphabet
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    return str(tok.to_str())


def build_m3_tokenizer() -> Any:
    from tokenizers import processors
    from transformers import XLMRobertaTokenizerFast

    tok = train_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], byte_level=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_tiny_m3(folder: Path, *, seed: int = 0, colbert_dim: int | None = None) -> str:
    """An XLM-RoBERTa-shaped encoder (hidden 32) with random ``colbert_linear.pt``/``sparse_linear.pt``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    tokenizer = build_m3_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    colbert = torch.nn.Linear(32, colbert_dim or 32)
    # a positive bias keeps most lexical weights above zero after the ReLU, as in the real model
    sparse = torch.nn.Linear(32, 1)
    with torch.no_grad():
        sparse.bias.fill_(0.2)
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return str(folder)


DECODER_SPECIALS = {
    # arch: (special tokens in id order, bos, eos, pad, byte-level)
    "llama": (["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>", False),
    "mistral": (["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>", False),
    "gemma2": (["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>", "<eos>", "<pad>", False),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>", True),
}


def build_decoder_tokenizer(arch: str, *, padding_side: str = "right", add_eos: bool = False) -> Any:
    """A trained BPE with the special tokens (and bos/eos habits) of ``arch``'s real tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad, byte_level = DECODER_SPECIALS[arch]
    tok = train_bpe(specials, byte_level=byte_level)
    single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
    used = [t for t in (bos, eos if add_eos else None) if t]
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, tok.token_to_id(t)) for t in used]
    )
    kwargs: dict[str, Any] = {
        "eos_token": eos,
        "padding_side": padding_side,
        "model_max_length": 512,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    if bos:
        kwargs["bos_token"] = bos
    if pad:
        kwargs["pad_token"] = pad
    if "<unk>" in specials:
        kwargs["unk_token"] = "<unk>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_tiny_decoder(
    folder: Path, arch: str, *, padding_side: str = "right", add_eos: bool = False, seed: int = 0
) -> str:
    """A 2-layer random decoder of ``arch`` (llama, mistral, qwen2, gemma2) saved with its tokenizer."""
    import transformers

    torch.manual_seed(seed)
    tokenizer = build_decoder_tokenizer(arch, padding_side=padding_side, add_eos=add_eos)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)  # saved with its LM head, as published LLMs are
    elif arch == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=None)
        model = transformers.MistralModel(config)
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2Model(config)
    elif arch == "gemma2":
        config = transformers.Gemma2Config(**common, head_dim=8, sliding_window=64)
        model = transformers.Gemma2Model(config)
    else:
        raise ValueError(arch)
    model.eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BGE-M3-shaped checkpoint with its two head files."""
    return build_tiny_m3(tmp_path_factory.mktemp("tiny-m3"))


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """Tiny decoders keyed by (arch, padding side): llama/mistral/qwen2/gemma2, left and right padding."""
    out: dict[tuple[str, str], str] = {}
    for arch in ("llama", "mistral", "qwen2", "gemma2"):
        for side in ("left", "right"):
            out[(arch, side)] = build_tiny_decoder(
                tmp_path_factory.mktemp(f"tiny-{arch}-{side}"), arch, padding_side=side
            )
    return out


# the reranker's tiny checkpoints and SciFact pairs (tests/inference/test_reranker*.py)
from .reranker_fixtures import (  # noqa: E402, F401
    bert_reranker_dir,
    bpe_tokenizer_bos,
    bpe_tokenizer_nobos,
    gemma2_reranker_dir,
    llama_reranker_dir,
    qwen2_reranker_dir,
    rerank_pairs,
    scifact_texts,
    xlmr_reranker_dir,
)
