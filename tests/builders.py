"""Tiny random models with real tokenizers, and the small files tests write, shared by every test folder.

Each builder saves a checkpoint as a user would find it on the hub (weights, tokenizer files, head files
or shipped modeling code) so tests load it back only through public APIs. Import from any test as
``from tests.builders import build_tiny_m3`` (``tests`` is a package; pytest puts the repository root
on ``sys.path``).

Encoders: BERT with the real MiniLM WordPiece tokenizer (``build_tiny_bert``), BGE-M3-shaped
XLM-RoBERTa with its ColBERT/sparse head files (``build_tiny_m3``). Decoders for embedding: Llama,
Mistral, Qwen2, Gemma2 (``build_tiny_decoder``). Rerankers: BERT and XLM-RoBERTa cross-encoders,
Llama/Gemma2/Qwen2 causal LMs, and the layer-wise MiniCPM and lightweight Gemma2 checkpoints with
FlagEmbedding's modeling code beside them. Tokenizers are trained on SciFact when the shared data is
there. Reranker weights use a large initialiser range so scores spread out and the differential tests
compare something.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SCIFACT = (REPO / ".." / "shared" / "data" / "scifact").resolve()
N_PAIRS = 500


# --- small files ---------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write ``rows`` as JSON lines (a corpus, queries or training rows) and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


WORDS = [
    "apple",
    "banana",
    "cherry",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def toy_rows(n: int = 8, negatives: int = 4, scores: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        row: dict = {
            "query": f"what is {w}?",
            "pos": [f"{w} is a word about {w} things"],
            "neg": [
                f"{WORDS[(i + k + 1) % len(WORDS)]} is unrelated text number {k}" for k in range(negatives)
            ],
        }
        if scores:
            row["pos_scores"] = [5.0]
            row["neg_scores"] = [float(-k) for k in range(negatives)]
        rows.append(row)
    return rows


def scifact_pairs(scifact_dir: Path, n: int = N_PAIRS) -> list[tuple[str, str]]:
    """``n`` real (SciFact query, SciFact passage) pairs: each query's relevant document, then others."""
    queries = {q["_id"]: q["text"] for q in read_jsonl(scifact_dir / "queries.jsonl")}
    corpus = read_jsonl(scifact_dir / "corpus.jsonl")
    docs = {d["_id"]: d for d in corpus}
    pairs: list[tuple[str, str]] = []
    qrels = sorted((scifact_dir / "qrels").glob("*.tsv"))
    for line in qrels[-1].read_text(encoding="utf-8").splitlines()[1:]:
        qid, did = line.split("\t")[:2]
        if qid in queries and did in docs:
            pairs.append((queries[qid], docs[did]["text"]))
        if len(pairs) >= n // 2:
            break
    query_list = list(queries.values())
    k = 0
    while len(pairs) < n:
        doc = corpus[(k * 37) % len(corpus)]
        pairs.append((query_list[(k * 13) % len(query_list)], f"{doc['title']} {doc['text']}"))
        k += 1
    return pairs


def training_texts(scifact_dir: Path, n: int = 3000) -> list[str]:
    rows = read_jsonl(scifact_dir / "corpus.jsonl")[:n]
    return [f"{r['title']} {r['text']}" for r in rows] + [
        q["text"] for q in read_jsonl(scifact_dir / "queries.jsonl")
    ]


class Overlap:
    """A reranker that counts shared words (anything with compute_score works)."""

    def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(len(set(q.lower().split()) & set(p.lower().split()))) for q, p in pairs]


# --- encoders ------------------------------------------------------------------------------------


def build_tiny_bert(folder: Path, tokenizer_dir: str, *, seed: int = 0, **config_overrides: object) -> str:
    """Save a tiny random BERT (2 layers, hidden 32) with the MiniLM tokenizer into ``folder``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        **{"max_position_embeddings": 512, **config_overrides},
    )
    model = BertModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_tiny_body(folder: Path | str, tokenizer_dir: str, *, seed: int = 0) -> str:
    """A tiny random BERT *body* (``BertModel``, no head, no dropout) with the real MiniLM tokenizer."""
    return build_tiny_bert(
        Path(folder), tokenizer_dir, seed=seed, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


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


# --- rerankers -----------------------------------------------------------------------------------


def build_bert_cross_encoder(
    folder: Path | str,
    tokenizer_dir: str,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    initializer_range: float = 0.2,
) -> str:
    """A tiny random BERT cross-encoder (``num_labels=1``) with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=initializer_range,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_unigram_tokenizer(texts: list[str], folder: Path) -> Any:
    """An XLM-RoBERTa tokenizer (Metaspace + Unigram, ``<s> A </s></s> B </s>``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        texts[:600], trainers.UnigramTrainer(vocab_size=1500, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )
    fast.save_pretrained(folder)
    return fast


def build_xlmr_cross_encoder(folder: Path, texts: list[str], *, seed: int = 0) -> str:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = build_unigram_tokenizer(texts, folder)
    torch.manual_seed(seed)
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
        num_labels=1,
        initializer_range=0.2,
    )
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    return str(folder)


def build_bpe_tokenizer(
    texts: list[str], *, with_bos: bool = True, yes_token: bool = True, vocab_size: int = 3000
) -> Any:
    """A byte-level BPE (Llama-3/Qwen2 style) trained on ``texts``; ``yes_token`` adds "Yes" as one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>" if with_bos else None,
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=4096,
    )
    if yes_token:
        fast.add_tokens(["Yes"])
    return fast


def build_decoder(
    folder: Path | str,
    arch: str,
    tokenizer: Any,
    *,
    seed: int = 0,
    layers: int = 3,
    initializer_range: float = 0.2,
    max_position_embeddings: int = 2048,
) -> str:
    """A tiny random ``arch`` (llama, gemma2, qwen2) causal LM saved with ``tokenizer``."""
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=initializer_range,
    )
    if arch == "llama":
        config: Any = LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "qwen2":
        config = Qwen2Config(**common, tie_word_embeddings=False)
    elif arch == "gemma2":
        config = Gemma2Config(
            **common,
            head_dim=8,
            sliding_window=64,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            query_pre_attn_scalar=8,
        )
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _copy_checkpoint_code(folder: Path, names: list[str]) -> None:
    """Copy FlagEmbedding's model files into ``folder``, as the published checkpoints ship them."""
    import shutil

    import FlagEmbedding.inference.reranker.decoder_only.models as models_pkg

    source = Path(models_pkg.__file__).parent
    for name in names:
        shutil.copy(source / name, folder / name)


def build_minicpm_layerwise(folder: Path, tokenizer: Any, *, seed: int = 3) -> str:
    """A tiny bge-reranker-v2-minicpm-layerwise: per-layer heads, its modeling code shipped beside it."""
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (
        LayerWiseMiniCPMConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    torch.manual_seed(seed)
    config = LayerWiseMiniCPMConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        scale_emb=12,
        dim_model_base=16,
        scale_depth=1.4,
        start_layer=2,
        head_multi=True,
        head_type="simple",
        use_cache=False,  # the checkpoint code predates transformers' current cache API
    )
    config.auto_map = {
        "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
        "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
    }
    LayerWiseMiniCPMForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _copy_checkpoint_code(folder, ["configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"])
    return str(folder)


def build_gemma2_lightweight(folder: Path, tokenizer: Any, *, seed: int = 4) -> str:
    """A tiny bge-reranker-v2.5-gemma2-lightweight: token compression code shipped beside it."""
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_config import CostWiseGemmaConfig
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import CostWiseGemmaForCausalLM

    torch.manual_seed(seed)
    config = CostWiseGemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        start_layer=2,
        layer_sep=1,
        layer_wise=True,
        sliding_window=64,
        query_pre_attn_scalar=8,
        use_cache=False,
    )
    config.auto_map = {
        "AutoConfig": "gemma_config.CostWiseGemmaConfig",
        "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM",
    }
    CostWiseGemmaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _copy_checkpoint_code(folder, ["gemma_config.py", "gemma_model.py"])
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
