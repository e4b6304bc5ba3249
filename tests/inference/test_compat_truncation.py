"""The FlagEmbedding-compatible classes, given no max_length, truncate exactly as FlagEmbedding 1.4.2 does.

Each compat class and method runs on inputs longer than the default limit (512 tokens) next to the same
FlagEmbedding class on the same tiny checkpoint (as the equivalence tests compare them); equal outputs mean
the same tokens were kept. Each case also checks the limit matters: a longer ``max_length`` changes the
output, so the comparison is not blind to truncation. FlagEmbedding's default limits are pinned against
its source where it is installed.

Not compared here: ``LightWeightFlagLLMReranker`` (FlagEmbedding's vendored Gemma-2 lightweight model does
not run on the installed transformers; see test_reranker_lightweight.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import compat
from bgekit.inference.reranker import DEFAULT_BATCH_SIZE as RERANKER_BATCH_SIZE
from bgekit.inference.reranker_settings import DEFAULT_MAX_LENGTH as RERANKER_MAX_LENGTH
from tests.builders import build_minicpm_layerwise, build_tiny_bert, build_tiny_decoder
from tests.inference.test_reranker_equivalence import flag_scores

ATOL = 1e-5
FLAG_LIMIT = 512  # FlagEmbedding 1.4.2's default query_max_length, passage_max_length and max_length


@pytest.fixture(scope="module")
def long_texts(scifact_corpus: list[dict]) -> list[str]:
    """A short text, one of a few hundred words and two of several SciFact abstracts joined (> 512 tokens)."""
    abstracts = [d["text"] for d in scifact_corpus[:12]]
    return [
        "what is a panda?",
        abstracts[0],
        " ".join(abstracts[1:6]),
        " ".join(abstracts[6:12]),
    ]


@pytest.fixture(scope="module")
def long_pairs(long_texts: list[str]) -> list[tuple[str, str]]:
    """Pairs whose passage, and in one pair the query too, run past 512 tokens."""
    return [
        (long_texts[0], long_texts[2]),
        (long_texts[1], long_texts[3]),
        (long_texts[3], long_texts[2]),
        (long_texts[0], long_texts[1]),
    ]


@pytest.fixture(scope="module")
def bert_1024_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A tiny BERT with 1,024 positions, so a longer limit than FlagEmbedding's 512 would run."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-1024"), minilm_tokenizer_dir, max_position_embeddings=1024
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama", padding_side="left")


def _longest(tokenizer: Any, texts: list[str]) -> int:
    return max(len(tokenizer(t)["input_ids"]) for t in texts)


def _same_and_truncated(ours: Any, theirs: Any, untruncated: Any) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=ATOL, rtol=0)
    assert np.abs(np.asarray(ours) - np.asarray(untruncated)).max() > 1e-4


# ---------------------------------------------------------------------- the constants, from the source
def test_flag_default_limits_are_pinned() -> None:
    """FlagEmbedding's defaults, read from its signatures where installed, equal the ones compat passes."""
    ours = compat._FLAG_EMBEDDER_DEFAULTS
    try:
        import FlagEmbedding
    except ImportError:
        # FlagEmbedding/abc/inference/AbsEmbedder.py (query_max_length=512, passage_max_length=512,
        # batch_size=256) and FlagEmbedding/abc/inference/AbsReranker.py (max_length=512, batch_size=128)
        expected = {"query_max_length": 512, "passage_max_length": 512, "batch_size": 256}
        assert {k: ours[k] for k in expected} == expected
        assert (RERANKER_MAX_LENGTH, RERANKER_BATCH_SIZE) == (512, 128)
        return
    for name in ("FlagModel", "BGEM3FlagModel", "FlagLLMModel", "FlagICLModel"):
        params = inspect.signature(getattr(FlagEmbedding, name).__init__).parameters
        for key in (
            "query_max_length",
            "passage_max_length",
            "batch_size",
            "normalize_embeddings",
            "use_fp16",
        ):
            assert params[key].default == ours[key], (name, key)
    for name in ("FlagReranker", "FlagLLMReranker", "LayerWiseFlagLLMReranker", "LightWeightFlagLLMReranker"):
        params = inspect.signature(getattr(FlagEmbedding, name).__init__).parameters
        assert params["max_length"].default == RERANKER_MAX_LENGTH, name
        assert params["batch_size"].default == RERANKER_BATCH_SIZE, name
        assert params["query_max_length"].default is None, name  # 3/4 of max_length at call time


# ---------------------------------------------------------------------------------------- embedders
def test_flag_model_truncates_as_flagembedding(bert_1024_dir: str, long_texts: list[str]) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    kwargs = {"use_fp16": False, "devices": ["cpu"], "query_instruction_for_retrieval": "query: "}
    ours = compat.FlagModel(bert_1024_dir, **kwargs)
    ref = flag.FlagModel(bert_1024_dir, **kwargs)
    assert _longest(ours.tokenizer, long_texts) > FLAG_LIMIT + 100
    for method in ("encode", "encode_queries", "encode_corpus"):
        _same_and_truncated(
            getattr(ours, method)(long_texts),
            getattr(ref, method)(long_texts),
            getattr(ours, method)(long_texts, max_length=1024),
        )


def test_bge_m3_flag_model_truncates_as_flagembedding(tiny_m3_dir: str, long_texts: list[str]) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    ours = compat.BGEM3FlagModel(tiny_m3_dir, use_fp16=False, devices="cpu")
    ref = flag.BGEM3FlagModel(tiny_m3_dir, use_fp16=False, devices="cpu")
    assert _longest(ours.tokenizer, long_texts) > FLAG_LIMIT + 100
    heads = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    for method in ("encode", "encode_queries", "encode_corpus"):
        mine, theirs = getattr(ours, method)(long_texts, **heads), getattr(ref, method)(long_texts, **heads)
        shorter = getattr(ours, method)(long_texts, max_length=128, **heads)
        _same_and_truncated(mine["dense_vecs"], theirs["dense_vecs"], shorter["dense_vecs"])
        for a, b in zip(mine["colbert_vecs"], theirs["colbert_vecs"], strict=True):
            assert a.shape == b.shape  # one vector per kept token: the same number of tokens kept
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
        for a, b in zip(mine["lexical_weights"], theirs["lexical_weights"], strict=True):
            assert a.keys() == b.keys()
    pairs = [(long_texts[3], long_texts[2]), (long_texts[0], long_texts[3])]
    mine_scores = ours.compute_score(pairs)
    theirs_scores = ref.compute_score(pairs, batch_size=2)
    shorter_scores = ours.compute_score(pairs, max_passage_length=128, max_query_length=128)
    keys = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
    for key in keys:
        np.testing.assert_allclose(mine_scores[key], theirs_scores[key], atol=ATOL, rtol=0)
    # the tiny model's dense scores barely move with the limit; the sparse and ColBERT ones do
    assert max(np.abs(np.subtract(mine_scores[k], shorter_scores[k])).max() for k in keys) > 1e-4


@pytest.mark.parametrize("name", ["FlagLLMModel", "FlagICLModel"])
def test_llm_flag_models_truncate_as_flagembedding(llama_dir: str, long_texts: list[str], name: str) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    kwargs = {"use_fp16": False, "devices": "cpu", "query_instruction_for_retrieval": "Find the passage."}
    ours = getattr(compat, name)(llama_dir, **kwargs)
    ref = getattr(flag, name)(llama_dir, **kwargs)
    assert _longest(ours.tokenizer, long_texts) > FLAG_LIMIT + 100
    for method in ("encode", "encode_queries", "encode_corpus"):
        mine, theirs = getattr(ours, method)(long_texts), getattr(ref, method)(long_texts)
        longer = getattr(ours, method)(long_texts, max_length=1000)
        if name == "FlagICLModel" and method == "encode_queries":
            # a long ICL query's budget: FlagEmbedding (decoder_only/icl.py) subtracts the tokens of the
            # literal strings "<s>" and "\n<response></s>", bgekit the tokenizer's own special tokens
            # (test_icl.py), a known difference; only the short query compares
            np.testing.assert_allclose(mine[:1], theirs[:1], atol=ATOL, rtol=0)
            assert np.abs(mine - longer).max() > 1e-4
            continue
        _same_and_truncated(mine, theirs, longer)


# ---------------------------------------------------------------------------------------- rerankers
def _compare_reranker(
    ours: Any, flag_name: str, folder: str, pairs: list[tuple[str, str]], **kwargs: Any
) -> None:
    assert ours.settings.max_length == FLAG_LIMIT
    mine = ours.compute_score(pairs)
    theirs = flag_scores(flag_name, folder, pairs, **kwargs)
    longer = ours.compute_score(pairs, max_length=1000)
    np.testing.assert_allclose(np.asarray(mine), theirs, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(mine) - np.asarray(longer)).max() > 1e-4


def test_flag_reranker_truncates_as_flagembedding(
    bert_reranker_dir: str, long_pairs: list[tuple[str, str]]
) -> None:
    pytest.importorskip("FlagEmbedding")
    ours = compat.FlagReranker(bert_reranker_dir, devices="cpu")
    assert _longest(ours.tokenizer, [q + " " + p for q, p in long_pairs]) > FLAG_LIMIT + 100
    mine = ours.compute_score(long_pairs)
    theirs = flag_scores("FlagReranker", bert_reranker_dir, long_pairs)
    np.testing.assert_allclose(np.asarray(mine), theirs, atol=1e-4, rtol=0)
    # a shorter query limit changes the scores: the default (3/4 of 512) is what FlagEmbedding uses
    other = ours.compute_score(long_pairs, query_max_length=64)
    assert np.abs(np.asarray(mine) - np.asarray(other)).max() > 1e-4
    auto = compat.FlagAutoReranker.from_finetuned(bert_reranker_dir, model_class="encoder-only-base")
    np.testing.assert_allclose(np.asarray(auto.compute_score(long_pairs)), theirs, atol=1e-4, rtol=0)


def test_flag_llm_reranker_truncates_as_flagembedding(
    llama_reranker_dir: str, long_pairs: list[tuple[str, str]]
) -> None:
    pytest.importorskip("FlagEmbedding")
    ours = compat.FlagLLMReranker(llama_reranker_dir, devices="cpu")
    _compare_reranker(ours, "FlagLLMReranker", llama_reranker_dir, long_pairs)


def test_layerwise_flag_reranker_truncates_as_flagembedding(
    tmp_path: Path, bpe_tokenizer_bos: Any, long_pairs: list[tuple[str, str]]
) -> None:
    pytest.importorskip("FlagEmbedding")
    folder = build_minicpm_layerwise(tmp_path / "minicpm", bpe_tokenizer_bos)
    ours = compat.LayerWiseFlagLLMReranker(folder, devices="cpu", trust_remote_code=True)
    assert ours.settings.max_length == FLAG_LIMIT
    mine = np.asarray(ours.compute_score(long_pairs, cutoff_layers=[3]))
    theirs = flag_scores("LayerWiseFlagLLMReranker", folder, long_pairs, cutoff_layers=[3])
    np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
    longer = np.asarray(ours.compute_score(long_pairs, cutoff_layers=[3], max_length=1000))
    assert np.abs(mine - longer).max() > 1e-4
