"""bgekit's reranker scores against FlagEmbedding's on the same tiny checkpoints and 500 real SciFact pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bgekit import Reranker
from tests.builders import build_bpe_tokenizer, build_decoder, build_minicpm_layerwise

ATOL = 1e-4
CROSS_MAX_LENGTH = 256  # most SciFact passages are longer, so truncation is exercised on most pairs
LLM_MAX_LENGTH = 128  # keeps the 500-pair LLM runs short while truncating most passages


def flag_scores(cls_name: str, folder: str, pairs: list[tuple[str, str]], **kwargs: Any) -> np.ndarray:
    import FlagEmbedding

    cls = getattr(FlagEmbedding, cls_name)
    model = cls(folder, devices="cpu", **kwargs)
    try:
        return np.asarray(model.compute_score([list(p) for p in pairs]), dtype=np.float64)
    finally:
        model.stop_self_pool()


@pytest.mark.parametrize("fixture", ["bert_reranker_dir", "xlmr_reranker_dir"])
@pytest.mark.parametrize("normalize", [False, True])
def test_cross_encoder_matches_flag_reranker(
    request: pytest.FixtureRequest, fixture: str, normalize: bool, rerank_pairs: list[tuple[str, str]]
) -> None:
    folder = request.getfixturevalue(fixture)
    reranker = Reranker(folder, device="cpu", normalize=normalize, max_length=CROSS_MAX_LENGTH)
    ours = np.asarray(reranker.compute_score(rerank_pairs))
    ref = flag_scores("FlagReranker", folder, rerank_pairs, normalize=normalize, max_length=CROSS_MAX_LENGTH)
    assert len(ours) == len(rerank_pairs) == 500
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert np.std(ours) > 1e-3  # the fixture's scores are spread out, so the comparison means something


def test_cross_encoder_short_max_length_and_instruction(
    bert_reranker_dir: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    """Truncation of both sides (query_max_length, passage fill) and instructions, as FlagReranker."""
    kwargs = dict(max_length=64, query_max_length=20)
    ours = Reranker(bert_reranker_dir, device="cpu", query_instruction="query: ", **kwargs).compute_score(
        rerank_pairs[:200]
    )
    ref = flag_scores(
        "FlagReranker",
        bert_reranker_dir,
        rerank_pairs[:200],
        query_instruction_for_rerank="query: ",
        **kwargs,
    )
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "normalize"),
    [
        ("llama_reranker_dir", False),
        ("llama_reranker_dir", True),
        ("gemma2_reranker_dir", False),
        ("qwen2_reranker_dir", False),
        ("qwen2_reranker_dir", True),
    ],
)
def test_llm_reranker_matches_flag_llm_reranker(
    request: pytest.FixtureRequest, fixture: str, normalize: bool, rerank_pairs: list[tuple[str, str]]
) -> None:
    folder = request.getfixturevalue(fixture)
    reranker = Reranker(folder, device="cpu", normalize=normalize, max_length=LLM_MAX_LENGTH)
    assert reranker.kind == "llm"
    ours = np.asarray(reranker.compute_score(rerank_pairs))
    ref = flag_scores("FlagLLMReranker", folder, rerank_pairs, normalize=normalize, max_length=LLM_MAX_LENGTH)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert np.std(ours) > 1e-3


def test_llm_reranker_custom_prompt_matches(
    gemma2_reranker_dir: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    prompt = "Does B answer A? Say Yes or No."
    pairs = rerank_pairs[:120]
    ours = Reranker(gemma2_reranker_dir, device="cpu", prompt=prompt, max_length=96).compute_score(pairs)
    ref = flag_scores("FlagLLMReranker", gemma2_reranker_dir, pairs, prompt=prompt, max_length=96)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_generic_layerwise_last_layer_equals_llm_score(
    llama_reranker_dir: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    pairs = rerank_pairs[:100]
    layers = Reranker(llama_reranker_dir, device="cpu", cutoff_layers=[1, 2, 3], max_length=96)
    assert layers.kind == "layerwise"
    per_layer = np.asarray(layers.compute_score(pairs))
    assert per_layer.shape == (3, 100)
    ref = flag_scores("FlagLLMReranker", llama_reranker_dir, pairs, max_length=96)
    np.testing.assert_allclose(per_layer[2], ref, atol=ATOL, rtol=0)
    assert np.abs(per_layer[0] - per_layer[2]).max() > 1e-3  # intermediate layers really differ


@pytest.mark.parametrize("fixture", ["gemma2_reranker_dir", "qwen2_reranker_dir"])
def test_generic_layerwise_intermediate_layers_by_hand(
    request: pytest.FixtureRequest, fixture: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    """Layer k = final norm + LM head (+ soft-capping) on ``output_hidden_states[k]`` at the last token."""
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    pairs = rerank_pairs[:24]
    reranker = Reranker(folder, device="cpu", cutoff_layers=[2, 1], max_length=64)
    ours = np.asarray(reranker.compute_score(pairs))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    features, _, _ = reranker._prompt_inputs.features(  # type: ignore[union-attr]
        reranker._apply_instructions(pairs), 64, 48, reranker._default_prompt()
    )
    yes = reranker.yes_token_id
    cap = getattr(model.config, "final_logit_softcapping", None)
    for i, feature in enumerate(features):
        ids = torch.tensor([feature["input_ids"]])
        with torch.no_grad():
            hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states
            for column, k in enumerate([2, 1]):
                logits = model.lm_head(model.model.norm(hidden[k][:, -1]))
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                assert abs(float(logits[0, yes]) - ours[column][i]) < ATOL


def test_minicpm_layerwise_heads_match_flag_layerwise(
    tmp_path: Path, bpe_tokenizer_bos: Any, rerank_pairs: list[tuple[str, str]]
) -> None:
    """A checkpoint with its own per-layer heads (remote code) scores as FlagEmbedding's layer-wise class."""
    folder = build_minicpm_layerwise(tmp_path / "minicpm", bpe_tokenizer_bos)
    pairs = rerank_pairs[:150]
    reranker = Reranker(folder, device="cpu", trust_remote_code=True, max_length=96, cutoff_layers=[2, 3, 4])
    ours = np.asarray(reranker.compute_score(pairs))
    ref = flag_scores("LayerWiseFlagLLMReranker", folder, pairs, max_length=96, cutoff_layers=[2, 3, 4])
    assert ours.shape == ref.shape == (3, 150)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    single = np.asarray(reranker.compute_score(pairs[:10], cutoff_layers=[3], normalize=True))
    np.testing.assert_allclose(single, 1 / (1 + np.exp(-ref[1][:10])), atol=ATOL, rtol=0)


def test_yes_token_is_the_last_piece_when_yes_splits(
    tmp_path: Path, scifact_texts: list[str], rerank_pairs: list[tuple[str, str]]
) -> None:
    """Where "Yes" is several tokens, bgekit scores the last one (what FlagEmbedding trains), not the first."""
    import FlagEmbedding

    tokenizer = build_bpe_tokenizer(scifact_texts, with_bos=True, yes_token=False)
    pieces = tokenizer("Yes", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1, "the fixture needs a tokenizer that splits 'Yes'"
    folder = build_decoder(tmp_path / "llama-split", "llama", tokenizer, seed=5)
    pairs = rerank_pairs[:60]
    reranker = Reranker(folder, device="cpu", max_length=64)
    assert reranker.yes_token_id == pieces[-1]
    ours = np.asarray(reranker.compute_score(pairs))
    flag = FlagEmbedding.FlagLLMReranker(folder, devices="cpu", max_length=64)
    first_piece = np.asarray(flag.compute_score([list(p) for p in pairs]))
    flag.yes_loc = pieces[-1]
    last_piece = np.asarray(flag.compute_score([list(p) for p in pairs]))
    np.testing.assert_allclose(ours, last_piece, atol=ATOL, rtol=0)
    assert np.abs(ours - first_piece).max() > 1e-3


def test_peft_adapter_merged_matches_flag(
    tmp_path: Path, llama_reranker_dir: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(llama_reranker_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # a trained-looking adapter, not the zero init
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    pairs = rerank_pairs[:60]
    ours = np.asarray(
        Reranker(llama_reranker_dir, device="cpu", peft_path=str(adapter), max_length=64).compute_score(pairs)
    )
    plain = np.asarray(Reranker(llama_reranker_dir, device="cpu", max_length=64).compute_score(pairs))
    ref = flag_scores("FlagLLMReranker", llama_reranker_dir, pairs, peft_path=str(adapter), max_length=64)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert np.abs(ours - plain).max() > 1e-3
