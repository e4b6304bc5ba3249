"""Embedder settings, saving and reloading, and bad input, on a tiny random BERT."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit import AutoEmbedder, ConfigError, Embedder, InputError, ModelLoadError
from bgekit.models.settings import EmbedderSettings, resolve_embedder_settings

INSTRUCTION = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: str) -> Embedder:
    return Embedder(tiny_bert_dir, pooling="cls", query_instruction=INSTRUCTION, device="cpu")


def _reference_cls(folder: str, texts: list[str]) -> np.ndarray:
    """CLS pooling written out with plain transformers, one text at a time."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    rows = []
    for text in texts:
        with torch.no_grad():
            out = model(**tok(text, return_tensors="pt", truncation=True, max_length=512)).last_hidden_state
        rows.append(torch.nn.functional.normalize(out[:, 0], dim=-1)[0].numpy())
    return np.stack(rows)


def test_queries_get_the_instruction(tiny: Embedder, tiny_bert_dir: str) -> None:
    queries = ["what is bge?", "how do pandas live?"]
    ours = tiny.encode_queries(queries)
    expected = _reference_cls(tiny_bert_dir, [INSTRUCTION + q for q in queries])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    passages = tiny.encode_corpus(queries)
    np.testing.assert_allclose(passages, _reference_cls(tiny_bert_dir, queries), atol=1e-5)


def test_save_pretrained_reloads_same_settings_and_outputs(tiny: Embedder, tmp_path: Path) -> None:
    tiny.save_pretrained(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "bgekit.json").read_text())
    assert saved["embedder"]["pooling"] == "cls"
    assert saved["embedder"]["query_instruction"] == INSTRUCTION
    assert (tmp_path / "saved" / "model.safetensors").exists()
    reloaded = Embedder(str(tmp_path / "saved"), device="cpu")
    assert reloaded.settings == tiny.settings
    assert reloaded.settings_origin["pooling"] == "bgekit.json"
    texts = ["what is bge?", "a longer query about retrieval evaluation"]
    np.testing.assert_allclose(reloaded.encode_queries(texts), tiny.encode_queries(texts), atol=1e-6)
    again = AutoEmbedder.from_pretrained(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(again.encode_corpus(texts), tiny.encode_corpus(texts), atol=1e-6)


def test_truncate_dim_is_applied_before_normalising(tiny_bert_dir: str) -> None:
    full = Embedder(tiny_bert_dir, pooling="mean", normalize=False, device="cpu").encode(["hello world"])
    cut = Embedder(tiny_bert_dir, pooling="mean", truncate_dim=8, device="cpu").encode(["hello world"])
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="truncate_dim"):
        Embedder(tiny_bert_dir, truncate_dim=1000, device="cpu")


def test_last_token_pooling_left_and_right_padding(tiny_bert_dir: str) -> None:
    texts = ["short", "a much longer text with many more tokens in it"]
    right = Embedder(tiny_bert_dir, pooling="last_token", padding_side="right", device="cpu").encode(texts)
    left = Embedder(tiny_bert_dir, pooling="last_token", padding_side="left", device="cpu").encode(texts)
    # BERT has absolute positions, so compare each text encoded alone (no padding at all)
    alone = Embedder(tiny_bert_dir, pooling="last_token", device="cpu", batch_size=1).encode(texts)
    np.testing.assert_allclose(right, alone, atol=1e-5)
    assert left.shape == right.shape


def test_explicit_arguments_beat_saved_settings_beat_st_config(minilm_path: str, tmp_path: Path) -> None:
    settings, origin = resolve_embedder_settings("x", minilm_path, {"pooling": "cls"})
    assert settings.pooling == "cls" and origin["pooling"] == "argument"
    assert origin["passage_max_length"] == "sentence-transformers"
    published, origin = resolve_embedder_settings("BAAI/bge-small-en-v1.5", str(tmp_path), {})
    assert published.query_instruction == INSTRUCTION and origin["query_instruction"] == "published-table"


def test_unknown_keyword_is_rejected_with_valid_names(tiny_bert_dir: str) -> None:
    with pytest.raises(ConfigError, match="query_instruction_for_retrieval.*Valid arguments"):
        Embedder(tiny_bert_dir, query_instruction_for_retrieval="x")
    with pytest.raises(ConfigError, match="pooling"):
        Embedder(tiny_bert_dir, pooling="max")
    with pytest.raises(ConfigError, match="unknown setting"):
        EmbedderSettings.from_dict({"poolin": "cls"})


def test_empty_and_bad_inputs(tiny: Embedder) -> None:
    assert tiny.encode_queries([]).shape == (0, 32)
    assert tiny.encode_corpus([]).shape == (0, 32)
    assert tiny.encode_corpus([""]).shape == (1, 32)  # an empty string encodes, as the references do
    assert tiny.encode("one text").shape == (32,)
    with pytest.raises(InputError, match=r"queries\[1\] is None \(NoneType\)"):
        tiny.encode_queries(["ok", None])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"corpus\[0\] is 3 \(int\)"):
        tiny.encode_corpus([3])
    with pytest.raises(InputError, match=r"corpus\[1\] is a dict without a string 'text'"):
        tiny.encode_corpus(["ok", {"title": "t"}])
    with pytest.raises(InputError, match="list of strings"):
        tiny.encode_queries(42)  # type: ignore[arg-type]


def test_long_texts_are_truncated(tiny: Embedder) -> None:
    long = "word " * 5000
    out = tiny.encode([long, long + "extra"], max_length=64)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_tensor_output(tiny: Embedder) -> None:
    out = tiny.encode(["a", "b"], convert_to_tensor=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 32)


def test_missing_or_non_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Embedder(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match=r"not a model folder: expected config.json"):
        Embedder(str(tmp_path))


def test_trust_remote_code_is_off_by_default(tiny: Embedder) -> None:
    assert tiny.trust_remote_code is False


def test_fp16_on_cpu_falls_back_with_warning(tiny_bert_dir: str) -> None:
    with pytest.warns(UserWarning, match="fp16"):
        model = Embedder(tiny_bert_dir, dtype="fp16", device="cpu")
    assert model.torch_dtype == torch.float32


def test_bf16_matches_fp32_closely(tiny_bert_dir: str) -> None:
    texts = ["retrieval with bge", "cats and dogs", "a"]
    fp32 = Embedder(tiny_bert_dir, device="cpu").encode(texts)
    bf16 = Embedder(tiny_bert_dir, device="cpu", dtype="bf16").encode(texts)
    assert bf16.dtype == np.float32
    assert float((fp32 * bf16).sum(1).min()) > 0.99


def test_fingerprint_changes_with_settings(tiny_bert_dir: str) -> None:
    a = Embedder(tiny_bert_dir, device="cpu").fingerprint()
    b = Embedder(tiny_bert_dir, device="cpu", query_instruction="q: ").fingerprint()
    assert a != b and a == Embedder(tiny_bert_dir, device="cpu").fingerprint()
    assert os.path.isdir(tiny_bert_dir)
