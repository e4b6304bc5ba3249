"""SearchIndex: exact dense/sparse/hybrid search, reranking, atomic save and load, resumable builds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.index import Hit, SearchIndex
from bgekit.inference.inputs import corpus_item_text
from bgekit.inference.m3 import lexical_matching_score
from tests.builders import Overlap


def brute_force_top(queries: np.ndarray, docs: np.ndarray, k: int) -> list[list[int]]:
    scores = queries @ docs.T
    return [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in scores]


def test_dense_search_is_exact_on_scifact(
    minilm: Embedder, scifact_slice: tuple[list[dict], list[str]]
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(minilm, corpus)
    assert len(index) == 300 and index.modes == ["dense"]
    results = index.search(queries, top_k=10)
    docs = minilm.encode_corpus([{"title": d["title"], "text": d["text"]} for d in corpus])
    expected = brute_force_top(minilm.encode_queries(queries), docs, 10)
    for hits, positions in zip(results, expected, strict=True):
        assert [h.id for h in hits] == [corpus[p]["_id"] for p in positions]
        assert hits[0].text == corpus[positions[0]]["text"] and hits[0].retrieval_score is None
    one = index.search(queries[0], top_k=3)
    assert isinstance(one[0], Hit) and [h.id for h in one] == [h.id for h in results[0][:3]]


def test_save_and_load_give_the_same_results(
    minilm: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(minilm, corpus[:100])
    target = tmp_path / "idx"
    index.save(str(target))
    assert sorted(os.listdir(target)) == ["bgekit-index.json", "dense.npy", "documents.jsonl"]
    again = SearchIndex.load(str(target), minilm)
    assert again.search(queries, top_k=5) == index.search(queries, top_k=5)
    assert SearchIndex.load(str(target)).search(queries[:2], top_k=5) == index.search(queries[:2], top_k=5)
    # saving over an index replaces it; nothing is left beside it
    SearchIndex.build(minilm, corpus[:50]).save(str(target))
    assert len(SearchIndex.load(str(target), minilm)) == 50
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    (tmp_path / "not-an-index").mkdir()
    (tmp_path / "not-an-index" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a bgekit index; refusing"):
        index.save(str(tmp_path / "not-an-index"))
    assert (tmp_path / "not-an-index" / "notes.txt").read_text() == "keep me"


def test_load_refuses_another_model(minilm: Embedder, m3: Embedder, tmp_path: Path) -> None:
    SearchIndex.build(minilm, ["a cat", "a dog"]).save(str(tmp_path / "idx"))
    with pytest.raises(ConfigError, match="built with another model"):
        SearchIndex.load(str(tmp_path / "idx"), m3)
    with pytest.raises(DataFormatError, match="not a bgekit index"):
        SearchIndex.load(str(tmp_path))


class FailingAfter:
    """Wraps an embedder and raises on the n-th corpus call, as a crash mid-build would."""

    def __init__(self, embedder: Embedder, calls: int) -> None:
        self.embedder, self.calls = embedder, calls
        self.fingerprint = embedder.fingerprint

    def encode_corpus(self, items: list[Any], **kwargs: Any) -> Any:
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("killed")
        return self.embedder.encode_corpus(items, **kwargs)


def test_an_interrupted_build_resumes_from_its_checkpoint(
    minilm: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    corpus = scifact_slice[0][:250]
    checkpoint = str(tmp_path / "partial")
    with pytest.raises(RuntimeError, match="killed"):
        SearchIndex.build(FailingAfter(minilm, 2), corpus, chunk_size=100, checkpoint_dir=checkpoint)
    assert sorted(os.listdir(checkpoint)) == ["build.json", "chunk-000000.npz", "chunk-000001.npz"]
    resumed = SearchIndex.build(minilm, corpus, chunk_size=100, checkpoint_dir=checkpoint)
    fresh = SearchIndex.build(minilm, corpus, chunk_size=100)
    assert resumed.info["chunks_resumed"] == 2 and fresh.info["chunks_resumed"] == 0
    assert resumed.dense is not None and fresh.dense is not None
    np.testing.assert_allclose(resumed.dense, fresh.dense, atol=1e-6)
    with pytest.raises(ConfigError, match="another build \\(different corpus\\)"):
        SearchIndex.build(minilm, corpus[:200], chunk_size=100, checkpoint_dir=checkpoint)


def test_m3_sparse_and_hybrid_scores_follow_bge_m3(
    m3: Embedder, scifact_slice: tuple[list[dict], list[str]]
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(m3, corpus[:120])
    assert index.modes == ["dense", "sparse", "hybrid"]
    texts = [corpus_item_text(d, i) for i, d in enumerate(corpus[:120])]
    doc_out = m3.encode_corpus(corpus[:120], return_sparse=True)
    query_out = m3.encode_queries(queries[:3], return_sparse=True)
    position = {d["_id"]: i for i, d in enumerate(corpus[:120])}
    weights = {"dense": 0.7, "sparse": 0.5}
    for mode in ("sparse", "hybrid"):
        results = index.search(queries[:3], top_k=8, mode=mode, weights=weights)
        for q, hits in enumerate(results):
            expected = []
            for i in range(len(texts)):
                sparse = float(
                    lexical_matching_score(query_out["lexical_weights"][q], doc_out["lexical_weights"][i])
                )
                dense = float(query_out["dense_vecs"][q] @ doc_out["dense_vecs"][i])
                expected.append(sparse if mode == "sparse" else 0.5 * sparse + 0.7 * dense)
            best = sorted(range(len(texts)), key=lambda i: (-expected[i], i))[:8]
            assert [position[h.id] for h in hits] == best
            np.testing.assert_allclose(
                [h.score for h in hits], [expected[i] for i in best], rtol=1e-4, atol=1e-5
            )
    assert index.search(queries[:1], top_k=8)[0] == index.search(queries[:1], top_k=8, mode="hybrid")[0]
    dense_only = SearchIndex.build(m3, corpus[:20], sparse=False)
    with pytest.raises(ConfigError, match="mode='hybrid' needs hybrid data"):
        dense_only.search("x", mode="hybrid")


def test_reranking_reorders_the_retrieved_hits(
    minilm: Embedder, scifact_slice: tuple[list[dict], list[str]]
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(minilm, corpus)
    retrieved = index.search(queries[:4], top_k=20)
    reranked = index.search(queries[:4], top_k=5, reranker=Overlap(), rerank_top_k=20)
    for query, first, second in zip(queries[:4], retrieved, reranked, strict=True):
        scores = Overlap().compute_score(
            [(query, corpus_item_text({"title": h.title, "text": h.text}, 0)) for h in first]
        )
        order = sorted(range(20), key=lambda i: -scores[i])[:5]  # stable: ties keep the retrieval order
        assert [h.id for h in second] == [first[i].id for i in order]
        assert [h.retrieval_score for h in second] == [first[i].score for i in order]
    assert len(index.search(queries[0], top_k=10, reranker=Overlap(), rerank_top_k=4)) == 4  # only reranked


def test_an_index_of_a_relative_model_path_loads_from_anywhere(
    minilm_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(os.path.dirname(minilm_path))
    index = SearchIndex.build(Embedder(os.path.basename(minilm_path), device="cpu"), ["a cat", "a dog"])
    index.save(str(tmp_path / "idx"))
    monkeypatch.chdir(tmp_path)
    assert SearchIndex.load("idx").search("kitten", top_k=1)[0].text == "a cat"


@pytest.mark.parametrize(
    ("corpus", "error", "message"),
    [
        ([], InputError, "the corpus is empty"),
        (
            [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}],
            InputError,
            r"corpus\[1\]: duplicate document id 'a'",
        ),
        ([{"id": "a", "body": "x"}], InputError, r"corpus\[0\] is a dict without a string 'text'"),
        (42, InputError, "corpus must be a corpus.jsonl path"),
    ],
)
def test_bad_corpora_are_named(minilm: Embedder, corpus: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        SearchIndex.build(minilm, corpus)


def test_bad_corpus_file_names_file_and_line(minilm: Embedder, tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "1", "text": "ok"}) + "\n" + json.dumps({"_id": "2"}) + "\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: missing field 'text'"):
        SearchIndex.build(minilm, str(path))


def test_bad_search_arguments_are_named(minilm: Embedder) -> None:
    index = SearchIndex.build(minilm, ["a cat", "a dog"])
    with pytest.raises(ConfigError, match="mode='sparse' needs sparse data"):
        index.search("cat", mode="sparse")
    with pytest.raises(ConfigError, match="mode='fuzzy' is not valid"):
        index.search("cat", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top_k must be an integer >= 1"):
        index.search("cat", top_k=0)
    with pytest.raises(ConfigError, match="weights has an unknown key 'colbert'"):
        index.search("cat", weights={"colbert": 1.0})
    with pytest.raises(InputError, match=r"queries\[1\]"):
        index.search(["cat", 3])  # type: ignore[list-item]
    assert [h.text for h in index.search("cat", top_k=50)] == ["a cat", "a dog"]  # k past the corpus size


@pytest.mark.slow
def test_index_search_reproduces_the_mteb_score_on_scifact(minilm: Embedder, scifact_dir: Path) -> None:
    from bgekit.evaluation.datasets import load_dataset
    from bgekit.evaluation.metrics import compute_metrics

    dataset = load_dataset(str(scifact_dir), split="test")
    index = SearchIndex.build(minilm, str(scifact_dir / "corpus.jsonl"))
    query_ids = list(dataset.queries)
    results = index.search([dataset.queries[q] for q in query_ids], top_k=10)
    run = {q: {hit.id: hit.score for hit in hits} for q, hits in zip(query_ids, results, strict=True)}
    scores, _ = compute_metrics(dataset.qrels, run, k_values=[10])
    assert scores["ndcg_at_10"] == pytest.approx(0.6451, abs=5e-5)  # MTEB's all-MiniLM-L6-v2 SciFact score


def test_m3_rescorer_reranks_with_m3s_own_combined_score(
    m3: Embedder, index_m3_dir: str, scifact_slice: tuple[list[dict], list[str]]
) -> None:
    from bgekit.index import M3Rescorer

    corpus, queries = scifact_slice
    index = SearchIndex.build(m3, corpus[:80])
    first = index.search(queries[0], top_k=15)
    reranked = index.search(queries[0], top_k=5, reranker=M3Rescorer(m3), rerank_top_k=15)
    pairs = [(queries[0], corpus_item_text({"title": h.title, "text": h.text}, 0)) for h in first]
    combined = m3.compute_score(pairs, weights_for_different_modes=[0.4, 0.2, 0.4])["colbert+sparse+dense"]
    order = sorted(range(15), key=lambda i: -combined[i])[:5]
    assert [h.id for h in reranked] == [first[i].id for i in order]
    np.testing.assert_allclose([h.score for h in reranked], [combined[i] for i in order], rtol=1e-6)
    with pytest.raises(ConfigError, match="needs a BGE-M3 embedder"):
        M3Rescorer(Embedder(index_m3_dir, device="cpu", kind="encoder"))
    with pytest.raises(ConfigError, match="mode='all' is not valid"):
        M3Rescorer(m3, mode="all")


def test_adding_documents_equals_building_with_them(
    minilm: Embedder, m3: Embedder, scifact_slice: tuple[list[dict], list[str]]
) -> None:
    corpus, queries = scifact_slice
    for embedder in (minilm, m3):
        whole = SearchIndex.build(embedder, corpus[:120])
        grown = SearchIndex.build(embedder, corpus[:70])
        grown.search(queries[0])  # the search structures are rebuilt after an add
        grown.add(corpus[70:120])
        assert len(grown) == 120 and grown.ids == whole.ids
        for a, b in zip(
            grown.search(queries[:5], top_k=10), whole.search(queries[:5], top_k=10), strict=True
        ):
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match=f"document id {corpus[5]['_id']!r} is already in the index"):
            grown.add([corpus[5]])
