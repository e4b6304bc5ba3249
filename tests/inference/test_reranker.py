"""The Reranker's API: inputs, truncation, rank(), settings saved beside weights, errors, compat names."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgekit import AutoReranker, ConfigError, InputError, Reranker
from bgekit.inference.rerank_inputs import CrossEncoderInputs, _reference_pair, read_pair_template
from bgekit.models import reranker_registry
from tests.builders import build_minicpm_layerwise

PAIRS = [
    ("what is a panda?", "The giant panda is a bear native to China."),
    ("what is a panda?", "Pandas is a Python library for data analysis."),
    ("how do vaccines work?", "Vaccines train the immune system to recognise a pathogen."),
]


@pytest.fixture(scope="module")
def bert_reranker(bert_reranker_dir: str) -> Reranker:
    return Reranker(bert_reranker_dir, device="cpu")


def test_compute_score_shapes(bert_reranker: Reranker) -> None:
    scores = bert_reranker.compute_score(PAIRS)
    assert isinstance(scores, list) and len(scores) == 3 and all(isinstance(s, float) for s in scores)
    single = bert_reranker.compute_score(PAIRS[1])
    assert isinstance(single, float) and single == pytest.approx(scores[1], abs=1e-5)
    assert bert_reranker.compute_score([]) == []
    normalized = bert_reranker.compute_score(PAIRS, normalize=True)
    np.testing.assert_allclose(normalized, 1 / (1 + np.exp(-np.asarray(scores))), atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "index"),
    [
        ([PAIRS[0], ("only one",)], 1),
        ([PAIRS[0], PAIRS[1], ("q", "p", "extra")], 2),
        (["not a pair", PAIRS[0], PAIRS[1]], 0),
        ([PAIRS[0], (None, "p")], 1),
        ([PAIRS[0], ("q", 3)], 1),
        ([{"query": "q", "passage": "p"}], 0),
    ],
)
def test_bad_pairs_name_their_index(bert_reranker: Reranker, bad: list[Any], index: int) -> None:
    with pytest.raises(InputError, match=rf"sentence_pairs\[{index}\]") as info:
        bert_reranker.compute_score(bad)
    assert isinstance(info.value, ValueError)


def test_non_list_input_is_rejected(bert_reranker: Reranker) -> None:
    with pytest.raises(InputError, match="list of \\(query, passage\\) pairs"):
        bert_reranker.compute_score("just a string")


def test_title_text_passages_joined_as_beir(bert_reranker: Reranker) -> None:
    as_dict = bert_reranker.compute_score([("q", {"title": "Pandas", "text": "Bears of China."})])
    as_text = bert_reranker.compute_score([("q", "Pandas Bears of China.")])
    assert as_dict == pytest.approx(as_text, abs=1e-6)


def test_unknown_arguments_rejected(bert_reranker_dir: str, bert_reranker: Reranker) -> None:
    with pytest.raises(ConfigError, match="normalise.*Valid arguments"):
        Reranker(bert_reranker_dir, normalise=True)
    with pytest.raises(ConfigError, match="use_dataloader"):
        bert_reranker.compute_score(PAIRS, use_dataloader=True)


def test_overlong_pair_is_truncated_as_documented(bert_reranker: Reranker) -> None:
    query = " ".join(["protein"] * 400)
    passage = " ".join(["cells"] * 900)
    inputs = bert_reranker._cross_inputs
    assert inputs is not None
    (feature,) = inputs.features([(query, passage)], 128, 96)
    ids = feature["input_ids"]
    assert len(ids) == 128
    sep = bert_reranker.tokenizer.sep_token_id
    assert ids.index(sep) == 1 + 96  # [CLS] + query cut to query_max_length, then [SEP]
    assert ids[-1] == sep
    score = bert_reranker.compute_score([(query, passage)], max_length=128, query_max_length=96)
    assert len(score) == 1 and np.isfinite(score[0])
    default = bert_reranker.compute_score([(query, passage)])  # max_length 512, query 384 tokens
    assert np.isfinite(default[0])


def test_query_max_length_must_leave_room(bert_reranker: Reranker) -> None:
    with pytest.raises(ConfigError, match="query_max_length=126 leaves no room"):
        bert_reranker.compute_score(PAIRS, max_length=128, query_max_length=126)


def test_max_length_beyond_positions_is_an_error(bert_reranker_dir: str) -> None:
    with pytest.raises(ConfigError, match="max_length=1024 exceeds"):
        Reranker(bert_reranker_dir, device="cpu", max_length=1024)


@pytest.mark.parametrize("fixture", ["bert_reranker_dir", "xlmr_reranker_dir"])
def test_pair_template_equals_prepare_for_model(
    request: pytest.FixtureRequest, fixture: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    """The bulk join gives exactly the ids ``prepare_for_model`` (FlagReranker's per-pair path) gives."""
    reranker = Reranker(request.getfixturevalue(fixture), device="cpu")
    tokenizer = reranker.tokenizer
    assert read_pair_template(tokenizer) is not None
    inputs = CrossEncoderInputs(tokenizer)
    pairs = rerank_pairs[:100] + [("", "x"), ("q", ""), ("", "")]
    for max_length, query_max_length in ((512, 384), (64, 16)):
        ours = inputs.features(pairs, max_length, query_max_length)
        for (query, passage), feature in zip(pairs, ours, strict=True):
            q = tokenizer(query, add_special_tokens=False, truncation=True, max_length=query_max_length)
            p = tokenizer(passage, add_special_tokens=False, truncation=True, max_length=max_length)
            ref = _reference_pair(tokenizer, q["input_ids"], p["input_ids"], max_length)
            assert feature == ref


def test_rank_is_sorted_compute_score_with_ties_in_input_order(bert_reranker: Reranker) -> None:
    passages = [p for _, p in PAIRS] * 2 + ["The giant panda is a bear native to China."]
    scores = bert_reranker.compute_score([("what is a panda?", p) for p in passages])
    ranked = bert_reranker.rank("what is a panda?", passages)
    expected = sorted(range(len(passages)), key=lambda i: (-scores[i], i))
    assert [i for i, _ in ranked] == expected
    assert [s for _, s in ranked] == pytest.approx([scores[i] for i in expected], abs=1e-6)
    # the panda passage appears at 0, 3 and 6 and scores the same (to the last bits where the CPU's kernels
    # compute identical rows identically: an AVX512-BF16 EPYC differs in the 7th digit); exact ties keep
    # input order, which the first assertion checks whatever the kernels give
    panda = [i for i, _ in ranked if passages[i].startswith("The giant panda")]
    assert sorted(panda) == [0, 3, 6]
    assert max(scores[i] for i in panda) - min(scores[i] for i in panda) < 1e-5
    assert bert_reranker.rank("what is a panda?", passages, top_k=2) == ranked[:2]
    assert bert_reranker.rank("what is a panda?", []) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=3), max_size=30), st.none() | st.integers(0, 40))
def test_rank_order_property(values: list[int], top_k: int | None) -> None:
    """rank() == stable sort of compute_score by descending score, whatever the ties."""
    fake = Reranker.__new__(Reranker)
    fake.settings = reranker_registry_settings()
    fake.compute_score = lambda pairs, **_: [float(values[i]) for i in range(len(pairs))]  # type: ignore[method-assign]
    ranked = Reranker.rank(fake, "q", [f"p{i}" for i in range(len(values))], top_k=top_k)
    expected = sorted(range(len(values)), key=lambda i: (-values[i], i))[:top_k]
    assert [i for i, _ in ranked] == expected


def reranker_registry_settings() -> Any:
    from bgekit.inference.reranker_settings import RerankerSettings

    return RerankerSettings(kind="cross-encoder")


def test_rank_rejects_bad_arguments(bert_reranker: Reranker) -> None:
    with pytest.raises(InputError, match="query"):
        bert_reranker.rank(None, ["p"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="passages"):
        bert_reranker.rank("q", "one passage")
    with pytest.raises(ConfigError, match="top_k"):
        bert_reranker.rank("q", ["p"], top_k=-1)


def test_cutoff_layers_validation(llama_reranker_dir: str, bert_reranker: Reranker) -> None:
    with pytest.raises(
        ValueError, match=r"cutoff_layers \[5\] are outside the model: valid layers are 1\.\.3"
    ):
        Reranker(llama_reranker_dir, device="cpu", cutoff_layers=[2, 5])
    reranker = Reranker(llama_reranker_dir, device="cpu", max_length=64)
    with pytest.raises(ValueError, match=r"valid layers are 1\.\.3"):
        reranker.compute_score(PAIRS, cutoff_layers=[0])
    with pytest.raises(ConfigError, match="cross-encoder"):
        bert_reranker.compute_score(PAIRS, cutoff_layers=[1])
    with pytest.raises(ConfigError, match="one score per passage"):
        reranker.rank("q", ["a", "b"], cutoff_layers=[1, 2])
    scores = reranker.compute_score(PAIRS, cutoff_layers=[1, 3])
    assert len(scores) == 2 and all(len(s) == 3 for s in scores)
    assert reranker.compute_score(PAIRS, cutoff_layers=[3]) == pytest.approx(
        reranker.compute_score(PAIRS), abs=1e-5
    )


def test_lightweight_needs_remote_code(llama_reranker_dir: str) -> None:
    with pytest.raises(ConfigError, match="trust_remote_code=True"):
        Reranker(llama_reranker_dir, device="cpu", kind="lightweight", compress_ratio=2)
    with pytest.raises(ConfigError, match="no token compression"):
        Reranker(llama_reranker_dir, device="cpu", kind="lightweight", trust_remote_code=True)


def test_checkpoint_code_needs_trust_remote_code(tmp_path: Path, bpe_tokenizer_bos: Any) -> None:
    folder = build_minicpm_layerwise(tmp_path / "minicpm", bpe_tokenizer_bos)
    with pytest.raises(ConfigError, match="'minicpm'.*trust_remote_code=True"):
        Reranker(folder, device="cpu")
    reranker = Reranker(folder, device="cpu", trust_remote_code=True, max_length=64)
    assert reranker.kind == "layerwise"  # per-layer heads found in the checkpoint's code
    with pytest.raises(ValueError, match=r"valid layers are 2\.\.4"):
        reranker.compute_score(PAIRS, cutoff_layers=[1])
    assert len(reranker.compute_score(PAIRS)) == 3  # default: the last layer


def test_save_pretrained_round_trip(tmp_path: Path, bert_reranker_dir: str) -> None:
    reranker = Reranker(
        bert_reranker_dir, device="cpu", normalize=True, query_instruction="query: ", max_length=128
    )
    expected = reranker.compute_score(PAIRS)
    reranker.save_pretrained(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "bgekit.json").read_text())["reranker"]
    assert saved["kind"] == "cross-encoder" and saved["normalize"] is True
    assert saved["query_instruction"] == "query: " and saved["max_length"] == 128
    loaded = AutoReranker.from_pretrained(tmp_path / "saved", device="cpu")
    assert loaded.settings_origin["normalize"] == "bgekit.json"
    assert loaded.compute_score(PAIRS) == pytest.approx(expected, abs=1e-6)
    assert loaded.fingerprint() != Reranker(tmp_path / "saved", device="cpu", normalize=False).fingerprint()
    assert "Reranker(" in repr(loaded)


def test_published_table() -> None:
    assert reranker_registry.lookup("BAAI/bge-reranker-v2-m3")["kind"] == "cross-encoder"
    gemma = reranker_registry.lookup("BAAI/bge-reranker-v2-gemma")
    assert gemma["kind"] == "llm" and gemma["prompt"].startswith("Given a query A and a passage B")
    assert reranker_registry.lookup("BAAI/bge-reranker-v2-minicpm-layerwise")["cutoff_layers"] == [28]
    light = reranker_registry.lookup("/models/bge-reranker-v2.5-gemma2-lightweight/")
    assert (
        light["kind"] == "lightweight"
        and light["compress_ratio"] == 2
        and light["compress_layers"] == [24, 40]
    )
    assert reranker_registry.lookup("someone/unknown") == {}
    names = reranker_registry.known_names()
    assert len(names) == 6 and all(n.startswith("baai/bge-reranker") for n in names)


def test_llm_defaults_and_instructions(llama_reranker_dir: str) -> None:
    reranker = Reranker(llama_reranker_dir, device="cpu", max_length=64)
    assert reranker.settings.query_instruction == "A: " and reranker.settings.passage_instruction == "B: "
    tokens = reranker._prompt_inputs.features(  # type: ignore[union-attr]
        reranker._apply_instructions([("what?", "this.")]), 64, 48, "Yes or No?"
    )[0][0]["input_ids"]
    text = reranker.tokenizer.decode(tokens)
    assert text == "<bos>A: what?\nB: this.\nYes or No?"


def test_compat_names(bert_reranker_dir: str, llama_reranker_dir: str) -> None:
    from bgekit.compat import FlagAutoReranker, FlagLLMReranker, FlagReranker

    reference = Reranker(bert_reranker_dir, device="cpu").compute_score(PAIRS, normalize=True)
    flag = FlagReranker(bert_reranker_dir, use_fp16=False, devices="cpu")
    assert flag.compute_score([list(p) for p in PAIRS], normalize=True) == pytest.approx(reference, abs=1e-6)
    auto = FlagAutoReranker.from_finetuned(
        bert_reranker_dir, model_class="encoder-only-base", devices=["cpu"]
    )
    assert auto.compute_score(PAIRS, normalize=True) == pytest.approx(reference, abs=1e-6)
    with pytest.raises(ConfigError, match="model_class='decoder-only-xl'"):
        FlagAutoReranker.from_finetuned(bert_reranker_dir, model_class="decoder-only-xl")
    with pytest.raises(ConfigError, match="use_fp32"):
        FlagReranker(bert_reranker_dir, use_fp32=True)
    llm = FlagLLMReranker(llama_reranker_dir, devices="cpu", max_length=64)
    assert len(llm.compute_score(PAIRS, use_dataloader=False)) == 3


@pytest.mark.slow
def test_two_cpu_workers_match_one_process(
    bert_reranker_dir: str, rerank_pairs: list[tuple[str, str]]
) -> None:
    pairs = random.Random(0).sample(rerank_pairs, 40)
    single = Reranker(bert_reranker_dir, device="cpu", max_length=128).compute_score(pairs)
    with Reranker(bert_reranker_dir, devices=["cpu", "cpu"], max_length=128) as pooled:
        both = pooled.compute_score(pairs)
        assert both == pytest.approx(single, abs=1e-5)
        with pytest.raises(InputError, match=r"sentence_pairs\[1\]"):
            pooled.compute_score([pairs[0], ("q",)])
        ranked = pooled.rank(pairs[0][0], [p for _, p in pairs[:10]], top_k=3)
        assert len(ranked) == 3


@pytest.mark.parametrize("fixture", ["bert_reranker_dir", "llama_reranker_dir"])
def test_tokenized_pairs_score_as_compute_score(request: pytest.FixtureRequest, fixture: str) -> None:
    """The pair protocol a server uses (tokenize off the model's thread, score many requests' pairs in one
    run) gives compute_score's numbers, raw and normalised, for pairs tokenized in separate calls."""
    reranker = Reranker(request.getfixturevalue(fixture), device="cpu")
    tokenized = reranker.tokenize_pairs(PAIRS[:1]) + reranker.tokenize_pairs(PAIRS[1:])
    assert len(tokenized) == 3 and all(p.feature["input_ids"] for p in tokenized)
    raw = reranker.score_tokenized(tokenized, normalize=False)
    np.testing.assert_allclose(raw, reranker.compute_score(PAIRS, normalize=False), atol=1e-5)
    normalised = reranker.score_tokenized(tokenized, normalize=True)
    np.testing.assert_allclose(normalised, reranker.compute_score(PAIRS, normalize=True), atol=1e-6)
    assert reranker.score_tokenized([]).shape == (0,)
    with pytest.raises(InputError, match=r"sentence_pairs\[1\]"):
        reranker.tokenize_pairs([PAIRS[0], ("only one",)])
