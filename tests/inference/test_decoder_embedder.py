"""Decoder-only embedders (last-token pooling) against FlagEmbedding's ``FlagLLMModel``.

Tiny random Llama, Mistral, Qwen2 and Gemma2 decoders, each with a trained tokenizer carrying that
family's special tokens, padded on the left and on the right; real SciFact queries and passages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import Embedder, ModelLoadError
from bgekit.compat import FlagLLMModel
from tests.builders import build_tiny_decoder

INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim."
CASES = [(arch, side) for arch in ("llama", "mistral", "qwen2", "gemma2") for side in ("left", "right")]


@pytest.fixture(scope="module")
def texts(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[str], list[str]]:
    queries = [row["text"] for row in scifact_queries[:50]]
    passages = [f"{row['title']} {row['text']}" for row in scifact_corpus[:50]]
    return queries, passages


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "side"), CASES)
def test_matches_flag_llm_model(
    decoder_dirs: dict, texts: tuple[list[str], list[str]], arch: str, side: str
) -> None:
    from FlagEmbedding import FlagLLMModel as ReferenceLLM

    folder = decoder_dirs[(arch, side)]
    queries, passages = texts
    reference = ReferenceLLM(
        folder,
        use_fp16=False,
        devices="cpu",
        query_instruction_for_retrieval=INSTRUCTION,
        passage_max_length=128,
    )
    ours = Embedder(folder, device="cpu", dtype="fp32", query_instruction=INSTRUCTION, passage_max_length=128)
    assert ours.settings.kind == "decoder" and ours.settings.pooling == "last_token"
    assert ours.tokenizer.padding_side == side
    expected_q = reference.encode_queries(queries)
    expected_p = reference.encode_corpus(passages)
    np.testing.assert_allclose(ours.encode_queries(queries), expected_q, atol=1e-5)
    np.testing.assert_allclose(ours.encode_corpus(passages), expected_p, atol=1e-5)
    # the instruction is used on queries only, in FlagLLMModel's default "Instruct: {}\nQuery: {}" format
    assert not np.allclose(ours.encode(queries[:3]), expected_q[:3], atol=1e-4)
    compat = FlagLLMModel(folder, use_fp16=False, devices="cpu", query_instruction_for_retrieval=INSTRUCTION)
    np.testing.assert_allclose(compat.encode_queries(queries[:10]), expected_q[:10], atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_last_token_pooling_same_for_left_and_right_padding(
    decoder_dirs: dict, texts: tuple[list[str], list[str]], arch: str
) -> None:
    queries, _ = texts
    left = Embedder(decoder_dirs[(arch, "left")], device="cpu", dtype="fp32").encode(queries[:20])
    right = Embedder(decoder_dirs[(arch, "right")], device="cpu", dtype="fp32").encode(queries[:20])
    np.testing.assert_allclose(left, right, atol=1e-5)  # same weights; only the padding side differs
    one_by_one = np.stack(
        [
            Embedder(decoder_dirs[(arch, "left")], device="cpu", dtype="fp32", batch_size=1).encode(q)
            for q in queries[:3]
        ]
    )
    np.testing.assert_allclose(left[:3], one_by_one, atol=1e-5)


def _by_hand(folder: str, texts: list[str], *, max_length: int, append_eos: bool) -> np.ndarray:
    """The published e5-mistral recipe: truncate to max_length - 1, append EOS, pool the last token."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = []
    for text in texts:
        ids = tok(text, truncation=True, max_length=max_length - int(append_eos))["input_ids"]
        if append_eos:
            ids = ids + [tok.eos_token_id]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        out.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    return np.stack(out)


def test_append_eos_where_the_tokenizer_does_not(
    decoder_dirs: dict, tmp_path: Path, texts: tuple[list[str], list[str]]
) -> None:
    _, passages = texts
    folder = decoder_dirs[("mistral", "right")]
    model = Embedder(folder, device="cpu", dtype="fp32", append_eos=True, passage_max_length=64)
    expected = _by_hand(folder, passages[:4], max_length=64, append_eos=True)
    np.testing.assert_allclose(model.encode_corpus(passages[:4]), expected, atol=1e-5)
    # a tokenizer that already ends with EOS gets no second one
    with_eos = build_tiny_decoder(tmp_path / "eos", "mistral", add_eos=True)
    assert Embedder(with_eos, device="cpu").tokenizer("a")["input_ids"][-1] == 2
    model = Embedder(with_eos, device="cpu", dtype="fp32", append_eos=True, passage_max_length=64)
    expected = _by_hand(with_eos, passages[:4], max_length=64, append_eos=False)
    np.testing.assert_allclose(model.encode_corpus(passages[:4]), expected, atol=1e-5)


def test_llm_defaults(decoder_dirs: dict) -> None:
    model = Embedder(decoder_dirs[("gemma2", "right")], device="cpu")
    assert model.dtype == "bf16"  # LLM kinds default to bf16
    assert model.model.dtype == torch.bfloat16
    assert model.settings.query_instruction_format == "Instruct: {}\nQuery: {}"
    assert model.encode(["x"]).dtype == np.float32


def test_lora_adapter_loaded_on_request(
    decoder_dirs: dict, tmp_path: Path, texts: tuple[list[str], list[str]]
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    folder = decoder_dirs[("llama", "right")]
    base = AutoModel.from_pretrained(folder)
    torch.manual_seed(1)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    merged = lora.merge_and_unload().eval()

    queries, _ = texts
    ours = Embedder(folder, device="cpu", dtype="fp32", adapter=str(tmp_path / "adapter")).encode(queries[:4])
    plain = Embedder(folder, device="cpu", dtype="fp32").encode(queries[:4])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    expected = []
    for q in queries[:4]:
        with torch.no_grad():
            hidden = merged(**tok(q, return_tensors="pt")).last_hidden_state[0, -1]
        expected.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    np.testing.assert_allclose(ours, np.stack(expected), atol=1e-5)
    assert not np.allclose(ours, plain, atol=1e-3)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        Embedder(folder, device="cpu", adapter=str(tmp_path))
