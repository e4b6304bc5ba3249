"""faiss search: exactness against brute force, chunking, ties, identical ids, reranking."""

from __future__ import annotations

import numpy as np
import pytest

from bgekit.errors import ConfigError, InputError
from bgekit.evaluation.datasets import RetrievalDataset
from bgekit.evaluation.metrics import ranked
from bgekit.evaluation.search import dense_search, encode_corpus_into_index, fuse_scores, rerank, search_index
from bgekit.inference.inputs import corpus_item_text


class TableEncoder:
    """Looks texts up in a fixed table of vectors: exact, deterministic, no model."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.corpus_calls: list[int] = []

    def encode_queries(self, queries: list[str], **kwargs: object) -> np.ndarray:
        return np.stack([self.vectors[q] for q in queries]).astype(np.float32)

    def encode_corpus(self, corpus: list, **kwargs: object) -> np.ndarray:
        self.corpus_calls.append(len(corpus))
        return np.stack([self.vectors[corpus_item_text(d, i)] for i, d in enumerate(corpus)]).astype(
            np.float32
        )


def random_dataset(seed: int = 0, docs: int = 57, queries: int = 9, dim: int = 8):
    rng = np.random.default_rng(seed)
    corpus = {f"doc{i}": {"title": "", "text": f"text {i}"} for i in range(docs)}
    query_texts = {f"q{i}": f"query {i}" for i in range(queries)}
    qrels = {q: {f"doc{(3 * i) % docs}": 1} for i, q in enumerate(query_texts)}
    vectors = {
        t: v for t, v in zip([f"text {i}" for i in range(docs)], rng.normal(size=(docs, dim)), strict=True)
    }
    vectors.update({t: v for t, v in zip(query_texts.values(), rng.normal(size=(queries, dim)), strict=True)})
    return RetrievalDataset("rand", corpus, query_texts, qrels), TableEncoder(vectors)


def brute_force(dataset: RetrievalDataset, encoder: TableEncoder, k: int) -> dict[str, list[str]]:
    doc_ids = list(dataset.corpus)
    d = encoder.encode_corpus([dataset.corpus[i] for i in doc_ids])
    out = {}
    for query_id, text in dataset.queries.items():
        scores = d @ encoder.encode_queries([text])[0]
        order = sorted(range(len(doc_ids)), key=lambda j: (-scores[j], doc_ids[j]))
        out[query_id] = [doc_ids[j] for j in order[:k]]
    return out


@pytest.mark.parametrize("chunk_size", [1000, 10, 7])
def test_chunked_exact_search_equals_brute_force(chunk_size: int) -> None:
    dataset, encoder = random_dataset()
    results, info = dense_search(encoder, dataset, top_k=10, chunk_size=chunk_size, show_progress=False)
    assert encoder.corpus_calls == [min(chunk_size, 57 - b) for b in range(0, 57, chunk_size)]
    assert max(encoder.corpus_calls) <= chunk_size  # never more than one chunk encoded at once
    expected = brute_force(dataset, encoder, 10)
    for query_id, docs in results.items():
        assert [d for d, _ in ranked(docs)] == expected[query_id]
    assert info["search_cached"] is False


def test_ties_broken_by_document_id_at_the_cut_off() -> None:
    import faiss

    index = faiss.IndexFlatIP(2)
    index.add(np.array([[1, 0]] * 6 + [[0, 1]], dtype=np.float32))
    doc_ids = ["a", "f", "c", "e", "b", "d", "z"]
    results = search_index(index, doc_ids, ["q"], np.array([[1, 0]], dtype=np.float32), 3)
    # six documents tie; the three highest ids win, whatever their position in the index
    assert [d for d, _ in ranked(results["q"])] == ["f", "e", "d"]


def test_ignore_identical_ids() -> None:
    dataset, encoder = random_dataset(docs=20, queries=3)
    corpus = {**dataset.corpus, "q0": {"title": "", "text": "query 0"}}  # the query is also a document
    ds = RetrievalDataset("args", corpus, dataset.queries, dataset.qrels)
    kept, _ = dense_search(encoder, ds, top_k=5, show_progress=False)
    assert ranked(kept["q0"])[0][0] == "q0"
    dropped, _ = dense_search(encoder, ds, top_k=5, ignore_identical_ids=True, show_progress=False)
    assert "q0" not in dropped["q0"] and len(dropped["q0"]) == 5


def test_top_k_larger_than_corpus_and_bad_values() -> None:
    dataset, encoder = random_dataset(docs=5, queries=2)
    results, _ = dense_search(encoder, dataset, top_k=1000, show_progress=False)
    assert all(len(docs) == 5 for docs in results.values())
    with pytest.raises(ConfigError, match="search_top_k"):
        dense_search(encoder, dataset, top_k=0, show_progress=False)
    with pytest.raises(ConfigError, match="corpus_chunk_size"):
        encode_corpus_into_index(encoder, dataset, chunk_size=0)


class WordOverlapReranker:
    """A fake cross-encoder: counts shared words (the protocol is all the rerank stage needs)."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.calls.append(pairs)
        return [float(len(set(q.lower().split()) & set(p.lower().split()))) for q, p in pairs]


def test_rerank_scores_the_top_k_only() -> None:
    corpus = {
        "d1": {"title": "Pandas", "text": "eat bamboo all day"},
        "d2": {"title": "", "text": "koalas eat eucalyptus"},
        "d3": {"title": "", "text": "unrelated"},
    }
    ds = RetrievalDataset("toy", corpus, {"q": "what do pandas eat"}, {"q": {"d1": 1}})
    retrieved = {"q": {"d3": 0.9, "d2": 0.8, "d1": 0.7}}
    reranker = WordOverlapReranker()
    out = rerank(reranker, ds, retrieved, top_k=3)
    assert reranker.calls == [
        [
            ("what do pandas eat", "unrelated"),
            ("what do pandas eat", "koalas eat eucalyptus"),
            ("what do pandas eat", "Pandas eat bamboo all day"),
        ]
    ]
    assert [d for d, _ in ranked(out["q"])] == ["d1", "d2", "d3"]
    assert list(rerank(WordOverlapReranker(), ds, retrieved, top_k=2)["q"]) == ["d3", "d2"]


def test_rerank_checks_the_reranker_output() -> None:
    class Short:
        def compute_score(self, pairs):
            return [0.0]

    ds = RetrievalDataset(
        "toy", {"a": {"title": "", "text": "x"}, "b": {"title": "", "text": "y"}}, {"q": "x"}, {"q": {"a": 1}}
    )
    with pytest.raises(InputError, match="1 scores for 2 pairs"):
        rerank(Short(), ds, {"q": {"a": 1.0, "b": 0.5}}, top_k=10)


def test_fuse_scores_standardises_each_stage_per_query() -> None:
    retrieved = {"q": {"a": 0.9, "b": 0.5, "c": 0.1, "d": 0.0}, "empty": {}}
    reranked = {"q": {"a": 10.0, "b": 30.0, "c": 20.0}, "empty": {}}
    fused = fuse_scores(retrieved, reranked, 0.5)
    assert set(fused["q"]) == {"a", "b", "c"} and fused["empty"] == {}
    z_rerank = np.array([-1.0, 1.0, 0.0]) / np.std([-1.0, 1.0, 0.0])
    dense = np.array([0.9, 0.5, 0.1])
    z_dense = (dense - dense.mean()) / dense.std()
    expected = 0.5 * z_rerank + 0.5 * z_dense
    assert [fused["q"][d] for d in "abc"] == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        fuse_scores(retrieved, reranked, -0.1)
    with pytest.raises(InputError, match="'x' has no retrieval score"):
        fuse_scores(retrieved, {"q": {"x": 1.0}}, 0.5)
