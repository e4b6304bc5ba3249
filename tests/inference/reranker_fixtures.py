"""Tiny random rerankers with real tokenizers, and real SciFact pairs, for the reranker tests.

Cross-encoders: BERT with the real MiniLM WordPiece tokenizer, XLM-RoBERTa with a SentencePiece-style
Unigram tokenizer trained on SciFact (``<s> A </s></s> B </s>`` pairs). Decoders: Llama, Gemma2 and
Qwen2 shaped, with a byte-level BPE trained on SciFact (with and without a BOS token). Weights use a
large initialiser range so scores spread out and the differential tests compare something.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

N_PAIRS = 500


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


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


def build_bert_cross_encoder(folder: Path, tokenizer_dir: str, *, seed: int = 0, layers: int = 2) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.2,
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


def build_bpe_tokenizer(texts: list[str], *, with_bos: bool, yes_token: bool) -> Any:
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
            vocab_size=3000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
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


def build_decoder(folder: Path, arch: str, tokenizer: Any, *, seed: int = 0, layers: int = 3) -> str:
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
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
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


@pytest.fixture(scope="session")
def rerank_pairs(scifact_dir: Path) -> list[tuple[str, str]]:
    """500 real SciFact (query, passage) pairs."""
    return scifact_pairs(scifact_dir)


@pytest.fixture(scope="session")
def scifact_texts(scifact_dir: Path) -> list[str]:
    return training_texts(scifact_dir)


@pytest.fixture(scope="session")
def bert_reranker_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    return build_bert_cross_encoder(tmp_path_factory.mktemp("bert-reranker"), minilm_tokenizer_dir)


@pytest.fixture(scope="session")
def xlmr_reranker_dir(tmp_path_factory: pytest.TempPathFactory, scifact_texts: list[str]) -> str:
    return build_xlmr_cross_encoder(tmp_path_factory.mktemp("xlmr-reranker"), scifact_texts)


@pytest.fixture(scope="session")
def bpe_tokenizer_bos(scifact_texts: list[str]) -> Any:
    return build_bpe_tokenizer(scifact_texts, with_bos=True, yes_token=True)


@pytest.fixture(scope="session")
def bpe_tokenizer_nobos(scifact_texts: list[str]) -> Any:
    return build_bpe_tokenizer(scifact_texts, with_bos=False, yes_token=True)


@pytest.fixture(scope="session")
def llama_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_bos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("llama-reranker"), "llama", bpe_tokenizer_bos)


@pytest.fixture(scope="session")
def gemma2_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_bos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("gemma2-reranker"), "gemma2", bpe_tokenizer_bos, seed=1)


@pytest.fixture(scope="session")
def qwen2_reranker_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_nobos: Any) -> str:
    return build_decoder(tmp_path_factory.mktemp("qwen2-reranker"), "qwen2", bpe_tokenizer_nobos, seed=2)


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
