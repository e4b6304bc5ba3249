"""BGE-M3 through bgekit against FlagEmbedding's ``BGEM3FlagModel`` on a tiny random M3 checkpoint.

200 real SciFact passages and 50 queries, fp32: dense vectors, lexical weights, ColBERT vectors and the
five ``compute_score`` outputs must equal FlagEmbedding's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from bgekit import ConfigError, Embedder, ModelLoadError
from bgekit.compat import BGEM3FlagModel

WEIGHTS = [0.4, 0.2, 0.4]


@pytest.fixture(scope="module")
def passages(scifact_corpus: list[dict]) -> list[str]:
    return [f"{row['title']} {row['text']}" for row in scifact_corpus[:200]]


@pytest.fixture(scope="module")
def queries(scifact_queries: list[dict]) -> list[str]:
    return [row["text"] for row in scifact_queries[:50]]


@pytest.fixture(scope="module")
def pairs(queries: list[str], passages: list[str]) -> list[tuple[str, str]]:
    # every passage once, queries reused: repeated texts exercise compute_score's de-duplication
    return [(queries[i % len(queries)], passage) for i, passage in enumerate(passages)]


@pytest.fixture(scope="module")
def reference(tiny_m3_dir: str, passages: list[str], queries: list[str], pairs: list) -> dict[str, Any]:
    """FlagEmbedding's outputs on the fixture, computed once."""
    from FlagEmbedding import BGEM3FlagModel as FlagM3

    flag = FlagM3(tiny_m3_dir, use_fp16=False, devices="cpu")
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    return {
        "model": flag,
        "passages": flag.encode_corpus(passages, **flags),
        "queries": flag.encode_queries(queries, **flags),
        # small batches keep FlagEmbedding's B x B score matrices cheap; the diagonal is the same
        "scores": flag.compute_score(pairs, batch_size=25, weights_for_different_modes=WEIGHTS),
    }


@pytest.fixture(scope="module")
def m3(tiny_m3_dir: str) -> Embedder:
    return Embedder(tiny_m3_dir, device="cpu", dtype="fp32", query_max_length=512, passage_max_length=512)


def assert_same_outputs(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(ours) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    np.testing.assert_allclose(ours["dense_vecs"], theirs["dense_vecs"], atol=1e-5)
    assert len(ours["lexical_weights"]) == len(theirs["lexical_weights"])
    for i, (mine, ref) in enumerate(zip(ours["lexical_weights"], theirs["lexical_weights"], strict=True)):
        assert set(mine) == set(ref), f"text {i}: token ids differ"
        for token, weight in mine.items():
            assert weight > 0
            assert abs(weight - float(ref[token])) < 1e-5, (i, token)
    assert len(ours["colbert_vecs"]) == len(theirs["colbert_vecs"])
    for mine, ref in zip(ours["colbert_vecs"], theirs["colbert_vecs"], strict=True):
        assert mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, atol=1e-5)


def test_detects_m3_from_head_files(m3: Embedder) -> None:
    assert m3.settings.kind == "m3"
    assert m3.colbert_dim == 32
    assert "kind" not in m3.settings_origin  # decided by the two head files, not a name


@pytest.mark.slow
def test_encode_matches_flagembedding(
    m3: Embedder, reference: dict, passages: list[str], queries: list[str]
) -> None:
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert_same_outputs(m3.encode_corpus(passages, **flags), reference["passages"])
    assert_same_outputs(m3.encode_queries(queries, **flags), reference["queries"])
    # lexical weights leave out FlagEmbedding's unused special tokens (CLS, EOS, PAD, UNK)
    tok = m3.tokenizer
    specials = {str(i) for i in (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)}
    assert all(not specials & set(w) for w in reference["passages"]["lexical_weights"])


@pytest.mark.slow
def test_compute_score_matches_flagembedding(m3: Embedder, reference: dict, pairs: list) -> None:
    ours = m3.compute_score(pairs, weights_for_different_modes=WEIGHTS)
    theirs = reference["scores"]
    assert set(ours) == {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}
    for key in ours:
        assert len(ours[key]) == len(pairs)
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, err_msg=key)
    single = m3.compute_score(pairs[0], weights_for_different_modes=WEIGHTS)
    assert isinstance(single["dense"], float)
    assert single["colbert+sparse+dense"] == pytest.approx(theirs["colbert+sparse+dense"][0], abs=1e-5)


@pytest.mark.slow
def test_score_helpers_match_flagembedding(m3: Embedder, reference: dict) -> None:
    flag = reference["model"]
    q, p = reference["queries"], reference["passages"]
    for i in range(5):
        assert m3.colbert_score(q["colbert_vecs"][i], p["colbert_vecs"][i]) == pytest.approx(
            float(flag.colbert_score(q["colbert_vecs"][i], p["colbert_vecs"][i])), abs=1e-6
        )
        assert m3.compute_lexical_matching_score(
            q["lexical_weights"][i], p["lexical_weights"][i]
        ) == pytest.approx(
            float(flag.compute_lexical_matching_score(q["lexical_weights"][i], p["lexical_weights"][i])),
            abs=1e-6,
        )
    matrix = m3.compute_lexical_matching_score(q["lexical_weights"][:5], p["lexical_weights"][:7])
    np.testing.assert_allclose(
        matrix,
        flag.compute_lexical_matching_score(q["lexical_weights"][:5], p["lexical_weights"][:7]),
        atol=1e-6,
    )
    assert m3.convert_id_to_token(p["lexical_weights"][:3]) == [
        flag.convert_id_to_token(w) for w in p["lexical_weights"][:3]
    ]


@pytest.mark.slow
def test_compat_class_matches_flagembedding(tiny_m3_dir: str, reference: dict, queries: list[str]) -> None:
    model = BGEM3FlagModel(tiny_m3_dir, use_fp16=False, devices="cpu")
    out = model.encode_queries(queries, return_sparse=True, return_colbert_vecs=True)
    assert_same_outputs(out, reference["queries"])
    assert model.encode(queries[:2])["lexical_weights"] is None  # FlagEmbedding's defaults: dense only


@pytest.mark.slow
def test_truncate_dim_matches_flagembedding(tiny_m3_dir: str, queries: list[str]) -> None:
    from FlagEmbedding import BGEM3FlagModel as FlagM3

    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    theirs = FlagM3(tiny_m3_dir, use_fp16=False, devices="cpu", truncate_dim=16).encode(queries[:8], **flags)
    ours = BGEM3FlagModel(tiny_m3_dir, use_fp16=False, devices="cpu", truncate_dim=16).encode(
        queries[:8], **flags
    )
    assert ours["dense_vecs"].shape == (8, 16) and ours["colbert_vecs"][0].shape[1] == 16
    assert_same_outputs(ours, theirs)


@pytest.mark.slow
def test_sparse_csr_search_equals_brute_force(
    m3: Embedder, scifact_corpus: list[dict], queries: list[str]
) -> None:
    corpus = [{"title": row["title"], "text": row["text"]} for row in scifact_corpus[200:350]]
    doc_csr = m3.encode_corpus(corpus, return_dense=False, return_sparse=True, sparse_format="csr")[
        "lexical_weights"
    ]
    doc_dicts = m3.encode_corpus(corpus, return_dense=False, return_sparse=True)["lexical_weights"]
    query_out = m3.encode_queries(queries[:20], return_dense=False, return_sparse=True, sparse_format="csr")
    query_csr = query_out["lexical_weights"]
    query_dicts = m3.encode_queries(queries[:20], return_dense=False, return_sparse=True)["lexical_weights"]
    assert sp.isspmatrix_csr(doc_csr) and doc_csr.shape == (150, m3.vocab_size)
    # the CSR rows hold exactly the dict entries
    row = doc_csr.getrow(7)
    assert {str(i): v for i, v in zip(row.indices, row.data, strict=True)} == pytest.approx(doc_dicts[7])

    inverted = (query_csr @ doc_csr.T).toarray()  # sparse retrieval: one sparse product
    for qi, q in enumerate(query_dicts):
        brute = np.array([m3.compute_lexical_matching_score(q, d) for d in doc_dicts])
        np.testing.assert_allclose(inverted[qi], brute, rtol=1e-5, atol=1e-6)
        top_sparse = np.argsort(-inverted[qi], kind="stable")[:10]
        top_brute = np.argsort(-brute, kind="stable")[:10]
        if list(top_sparse) != list(top_brute):  # only an exact tie at float precision may reorder
            np.testing.assert_allclose(
                np.sort(inverted[qi][top_sparse]), np.sort(brute[top_brute]), rtol=1e-6
            )
        assert brute[top_brute[0]] > 0


def test_single_text_and_save_roundtrip(m3: Embedder, tmp_path: Path) -> None:
    out = m3.encode("Vitamin D and bone density.", return_sparse=True, return_colbert_vecs=True)
    assert out["dense_vecs"].shape == (32,)
    assert isinstance(out["lexical_weights"], dict)
    assert out["colbert_vecs"].ndim == 2 and out["colbert_vecs"].shape[1] == 32
    m3.save_pretrained(str(tmp_path))
    again = Embedder(str(tmp_path), device="cpu")
    assert again.settings.kind == "m3"
    out2 = again.encode("Vitamin D and bone density.", return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(out2["colbert_vecs"], out["colbert_vecs"], atol=1e-6)
    assert out2["lexical_weights"] == pytest.approx(out["lexical_weights"])


def test_colbert_dim_keeps_first_dimensions(tiny_m3_dir: str, m3: Embedder) -> None:
    small = Embedder(tiny_m3_dir, device="cpu", colbert_dim=8)
    full = m3.encode(["a short query"], return_dense=False, return_colbert_vecs=True)["colbert_vecs"][0]
    cut = small.encode(["a short query"], return_dense=False, return_colbert_vecs=True)["colbert_vecs"][0]
    assert small.colbert_dim == 8 and cut.shape[1] == 8
    # truncated before normalising, like Matryoshka dense vectors
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="colbert_dim=64 exceeds"):
        Embedder(tiny_m3_dir, device="cpu", colbert_dim=64)


def test_bad_inputs(m3: Embedder, tiny_m3_dir: str, tmp_path: Path, minilm_path: str) -> None:
    with pytest.raises(ValueError, match="all False"):
        m3.encode(["x"], return_dense=False, return_sparse=False, return_colbert_vecs=False)
    with pytest.raises(ValueError, match="3 values"):
        m3.compute_score([("q", "p")], weights_for_different_modes=[1.0, 1.0])
    with pytest.raises(ValueError, match="sentence_pairs\\[1\\]"):
        m3.compute_score([("q", "p"), ("only one",)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sparse_format"):
        m3.encode(["x"], return_sparse=True, sparse_format="coo")  # type: ignore[arg-type]

    broken = tmp_path / "broken-m3"
    shutil.copytree(tiny_m3_dir, broken)
    (broken / "colbert_linear.pt").unlink()
    with pytest.raises(ModelLoadError, match="colbert_linear.pt"):
        Embedder(str(broken), device="cpu")
    (broken / "sparse_linear.pt").unlink()
    with pytest.raises(ModelLoadError, match="sparse_linear.pt"):
        Embedder(str(broken), device="cpu", kind="m3")
    plain = Embedder(str(broken), device="cpu")  # no head files at all: a plain encoder
    assert plain.settings.kind == "encoder"
    with pytest.raises(ConfigError, match="BGE-M3"):
        plain.encode(["x"], return_sparse=True)
    with pytest.raises(ConfigError, match="BGE-M3"):
        plain.compute_score([("q", "p")])


def test_flag_auto_model_hands_m3_to_bgem3_class(tiny_m3_dir: str) -> None:
    from bgekit.compat import FlagAutoModel

    model = FlagAutoModel.from_finetuned(tiny_m3_dir, use_fp16=False, devices="cpu", return_sparse=True)
    assert isinstance(model, BGEM3FlagModel)
    assert model.encode(["a query"])["lexical_weights"] is not None
    with pytest.raises(ConfigError, match="model_class"):
        FlagAutoModel.from_finetuned(tiny_m3_dir, model_class="encoder-only-m4")


@pytest.mark.slow
def test_several_devices_give_the_same_outputs(tiny_m3_dir: str, m3: Embedder, passages: list[str]) -> None:
    flags = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    expected = m3.encode(passages[:40], **flags)
    with Embedder(tiny_m3_dir, devices=["cpu", "cpu"], dtype="fp32", passage_max_length=512) as pooled:
        got = pooled.encode(passages[:40], **flags)
        csr = pooled.encode(passages[:40], return_dense=False, return_sparse=True, sparse_format="csr")
    assert_same_outputs(got, expected)
    assert csr["lexical_weights"].shape[0] == 40 and csr["dense_vecs"] is None


def test_kind_encoder_gives_the_dense_vectors_as_an_array(tiny_m3_dir: str, m3: Embedder) -> None:
    plain = Embedder(tiny_m3_dir, device="cpu", dtype="fp32", kind="encoder", passage_max_length=512)
    vectors = plain.encode(["one text", "another text"])
    assert isinstance(vectors, np.ndarray)
    np.testing.assert_allclose(vectors, m3.encode(["one text", "another text"])["dense_vecs"], atol=1e-6)


def test_m3_feeds_dense_search_mining_and_mteb(m3: Embedder, passages: list[str], queries: list[str]) -> None:
    """Evaluation, mining and the mteb adapter take the dense vectors of M3's dict output."""
    from bgekit.evaluation.datasets import RetrievalDataset
    from bgekit.evaluation.mteb_adapter import MTEBEncoder
    from bgekit.evaluation.search import dense_search
    from bgekit.finetune.mining import MiningOptions, mine_hard_negatives

    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(passages[:40])}
    dataset = RetrievalDataset("toy", corpus, {"q0": queries[0]}, {"q0": {"d0": 1}})
    results, _ = dense_search(m3, dataset, top_k=5, show_progress=False)
    expected = m3.encode_corpus(passages[:40])["dense_vecs"] @ m3.encode_queries(queries[0])["dense_vecs"]
    found = {doc: score for doc, score in results["q0"].items()}
    assert len(found) == 5
    for doc, score in found.items():
        assert score == pytest.approx(float(expected[int(doc[1:])]), abs=1e-5)
    assert min(found.values()) >= np.sort(expected)[-5] - 1e-5

    top = int(np.argmax(expected))  # the margin then keeps every other candidate
    rows = [{"query": queries[0], "pos": [passages[top]], "neg": []}]
    mined = mine_hard_negatives(
        m3, rows, passages[:40], MiningOptions.from_range("0-10", negatives=3, absolute_margin=0.0)
    )
    assert len(mined[0]["neg"]) == 3 and passages[top] not in mined[0]["neg"]

    vectors = MTEBEncoder(m3).encode(passages[:3], prompt_type="document")
    assert vectors.shape == (3, m3.dim) and vectors.dtype == np.float32
