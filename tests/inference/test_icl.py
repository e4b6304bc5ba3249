"""ICL embedders (bge-en-icl style) against FlagEmbedding's ``FlagICLModel``: few-shot examples on queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgekit import ConfigError, Embedder
from bgekit.compat import FlagICLModel

INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim."


@pytest.fixture(scope="module")
def texts(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[str], list[str]]:
    queries = [row["text"] for row in scifact_queries[:50]]
    passages = [f"{row['title']} {row['text']}" for row in scifact_corpus[:30]]
    return queries, passages


@pytest.fixture(scope="module")
def examples(scifact_corpus: list[dict], scifact_queries: list[dict]) -> list[dict[str, str]]:
    return [
        {
            "instruct": INSTRUCTION,
            "query": scifact_queries[100]["text"],
            "response": scifact_corpus[300]["text"][:300],
        },
        {
            "instruct": INSTRUCTION,
            "query": scifact_queries[101]["text"],
            "response": scifact_corpus[301]["text"][:300],
        },
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "side"), [("llama", "left"), ("llama", "right"), ("qwen2", "left")])
def test_matches_flag_icl_model(
    decoder_dirs: dict, texts: tuple[list[str], list[str]], examples: list[dict], arch: str, side: str
) -> None:
    from FlagEmbedding import FlagICLModel as ReferenceICL

    folder = decoder_dirs[(arch, side)]
    queries, passages = texts
    reference = ReferenceICL(
        folder,
        use_fp16=False,
        devices="cpu",
        query_instruction_for_retrieval=INSTRUCTION,
        examples_for_task=examples,
    )
    ours = Embedder(
        folder,
        device="cpu",
        dtype="fp32",
        kind="icl",
        query_instruction=INSTRUCTION,
        examples_for_task=examples,
        passage_max_length=512,
    )
    expected_q = reference.encode_queries(queries)
    np.testing.assert_allclose(ours.encode_queries(queries), expected_q, atol=1e-5)
    np.testing.assert_allclose(ours.encode_corpus(passages), reference.encode_corpus(passages), atol=1e-5)
    compat = FlagICLModel(
        folder,
        use_fp16=False,
        devices="cpu",
        query_instruction_for_retrieval=INSTRUCTION,
        examples_for_task=examples,
    )
    np.testing.assert_allclose(compat.encode_queries(queries[:10]), expected_q[:10], atol=1e-5)


def test_examples_change_queries_only(
    decoder_dirs: dict, texts: tuple[list[str], list[str]], examples: list
) -> None:
    queries, passages = texts
    model = Embedder(
        decoder_dirs[("llama", "right")],
        device="cpu",
        dtype="fp32",
        kind="icl",
        query_instruction=INSTRUCTION,
    )
    assert model.settings.query_instruction_format == "<instruct>{}\n<query>{}"
    zero_shot_q, zero_shot_p = model.encode_queries(queries[:4]), model.encode_corpus(passages[:4])
    model.set_examples(examples)
    assert model.icl_prefix().count("<response>") == 2 and model.icl_prefix().endswith("\n\n")
    assert not np.allclose(model.encode_queries(queries[:4]), zero_shot_q, atol=1e-4)
    np.testing.assert_allclose(model.encode_corpus(passages[:4]), zero_shot_p, atol=1e-6)


def test_query_budget_uses_the_tokenizers_own_special_tokens(
    decoder_dirs: dict, texts: tuple[list[str], list[str]], examples: list
) -> None:
    """Gemma-style specials (<bos>/<eos>): the query keeps max_length minus the suffix and one <bos>."""
    from transformers import AutoModel

    folder = decoder_dirs[("gemma2", "right")]
    queries, _ = texts
    long_query = " ".join(queries[:6])
    model = Embedder(
        folder, device="cpu", dtype="fp32", kind="icl", examples_for_task=examples, query_max_length=32
    )
    tok = model.tokenizer
    suffix_len = len(tok("\n<response>", add_special_tokens=False)["input_ids"])
    body_ids = tok(long_query, add_special_tokens=False)["input_ids"][: 32 - 1 - suffix_len]
    text = model.icl_prefix() + tok.decode(body_ids) + "\n<response>"
    ids = tok(text)["input_ids"]
    # FlagEmbedding would count "<s>" and "</s>" as text here (several tokens each with this tokenizer)
    assert len(tok("<s>", add_special_tokens=False)["input_ids"]) > 1
    backbone = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    expected = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    np.testing.assert_allclose(model.encode_queries(long_query), expected, atol=1e-5)


def test_bad_examples(decoder_dirs: dict) -> None:
    folder = decoder_dirs[("llama", "right")]
    with pytest.raises(ConfigError, match=r"examples_for_task\[1\] has unknown key"):
        Embedder(folder, device="cpu", kind="icl", examples_for_task=[{"query": "q"}, {"answer": "a"}])
    with pytest.raises(ConfigError, match=r"examples_for_task\[0\]\['query'\] is int"):
        Embedder(folder, device="cpu", kind="icl", examples_for_task=[{"query": 3}])
    with pytest.raises(ConfigError, match="examples_for_task must be a list"):
        Embedder(folder, device="cpu", kind="icl", examples_for_task="q: a")
    model = Embedder(folder, device="cpu", kind="icl", query_max_length=3)
    with pytest.raises(ConfigError, match="no room for the query"):
        model.encode_queries(["a query"])


def test_flag_auto_model_model_class(decoder_dirs: dict) -> None:
    from bgekit.compat import FlagAutoModel, FlagLLMModel

    folder = decoder_dirs[("llama", "right")]
    icl = FlagAutoModel.from_finetuned(folder, model_class="decoder-only-icl", use_fp16=False, devices="cpu")
    assert isinstance(icl, FlagICLModel) and icl.settings.kind == "icl"
    llm = FlagAutoModel.from_finetuned(folder, model_class="decoder-only-base", use_fp16=False, devices="cpu")
    assert type(llm) is FlagLLMModel and llm.dtype == "fp32"
