"""MilvusStore on Milvus Lite: the same hits as SearchIndex (dense, sparse, hybrid), every way of filling a
collection, clear errors, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from bgekit import Embedder  # noqa: E402
from bgekit.errors import ConfigError, InputError  # noqa: E402
from bgekit.index import Hit, SearchIndex  # noqa: E402
from bgekit.stores import MilvusStore  # noqa: E402
from tests.builders import Overlap, write_jsonl  # noqa: E402


def assert_same_top(found: list[Hit], exhaustive: list[Hit], k: int) -> None:
    """``found`` is a top-``k`` of the scores in ``exhaustive`` (every document, best first): each hit has
    its exhaustive score, and the scores are the ``k`` best. Ties may be ordered either way."""
    truth = {hit.id: hit.score for hit in exhaustive}
    assert len(found) == min(k, len(exhaustive))
    np.testing.assert_allclose([h.score for h in found], [truth[h.id] for h in found], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [h.score for h in found], [h.score for h in exhaustive[:k]], rtol=1e-4, atol=1e-5
    )
    assert len({h.id for h in found}) == len(found)


def test_dense_sparse_and_hybrid_search_match_search_index(
    m3: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(m3, corpus)
    with MilvusStore.from_index(index, str(tmp_path / "m3.db")) as store:
        assert len(store) == len(corpus) and store.modes == ["dense", "sparse", "hybrid"]
        cases = [
            ("dense", None),
            ("sparse", None),
            ("hybrid", None),
            ("hybrid", {"dense": 0.7, "sparse": 0.5}),
        ]
        for mode, weights in cases:
            found = store.search(queries, top_k=10, mode=mode, weights=weights)  # type: ignore[arg-type]
            full = index.search(queries, top_k=len(corpus), mode=mode, weights=weights)  # type: ignore[arg-type]
            for hits, exhaustive in zip(found, full, strict=True):
                assert_same_top(hits, exhaustive, 10)
        # the default is hybrid with BGE-M3's weights, as SearchIndex; one query gives one list
        one = store.search(queries[0], top_k=10)
        assert isinstance(one[0], Hit) and one[0].text and one[0].retrieval_score is None
        assert_same_top(one, index.search(queries[0], top_k=len(corpus)), 10)
        # reciprocal rank fusion of the dense and sparse rankings, by Milvus' RRFRanker. Milvus Lite 3.2's RRF
        # scores drift by up to a few ranks from the formula on some queries, so the check is loose: the
        # fused top-10 mostly agrees with 1/(60+rank) summed over the two rankings.
        for query, fused in zip(queries[:4], store.search(queries[:4], top_k=10, fusion="rrf"), strict=True):
            expected: dict[str, float] = {}
            for mode in ("dense", "sparse"):
                ranking = store.search(query, top_k=len(corpus), mode=mode)  # type: ignore[arg-type]
                for rank, hit in enumerate(ranking, start=1):
                    expected[hit.id] = expected.get(hit.id, 0.0) + 1.0 / (60 + rank)
            best = sorted(expected, key=lambda i: -expected[i])[:10]
            scores = [h.score for h in fused]
            assert scores == sorted(scores, reverse=True) and scores[-1] > 0 and scores[0] <= 2 / 61 + 1e-9
            assert len({h.id for h in fused} & set(best)) >= 7


def test_memory_parquet_and_encoding_fill_the_same_collection(
    m3: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus, queries = scifact_slice[0][:60], scifact_slice[1][:5]
    ids = [d["_id"] for d in corpus]
    docs = [{"title": d["title"], "text": d["text"]} for d in corpus]
    uri = str(tmp_path / "fill.db")
    reference = SearchIndex.build(m3, corpus)
    expected = reference.search(queries, top_k=len(corpus))

    def check(store: MilvusStore) -> None:
        assert len(store) == len(corpus)
        for hits, exhaustive in zip(store.search(queries, top_k=10), expected, strict=True):
            assert_same_top(hits, exhaustive, 10)

    # from memory, with M3's {"token_id": weight} dicts as Embedder.encode gives them
    out = m3.encode_corpus(docs, return_sparse=True)
    with MilvusStore.create(uri, m3, collection="memory") as store:
        assert store.insert(ids[:40], docs[:40], out["dense_vecs"][:40], out["lexical_weights"][:40]) == 40
        assert store.insert(ids, docs, out["dense_vecs"], out["lexical_weights"]) == 20  # known ids skipped
        check(store)
        with pytest.raises(InputError, match="appears twice"):
            store.insert(["x", "x"], ["a", "b"], out["dense_vecs"][:2], out["lexical_weights"][:2])
        with pytest.raises(InputError, match="keeps sparse vectors: pass sparse="):
            store.insert(["y"], ["a"], out["dense_vecs"][:1])

    # from Parquet shards: bgekit.distributed's layout (sparse struct, texts from the corpus) and two list
    # columns with the texts in the shard
    folder = tmp_path / "parts"
    folder.mkdir()
    dense = np.asarray(out["dense_vecs"], dtype=np.float32)
    lexical = reference.sparse
    assert lexical is not None
    rows = [lexical[i] for i in range(len(corpus))]
    first = pa.table(
        {
            "id": ids[:30],
            "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense[:30].reshape(-1)), dense.shape[1]),
            "sparse": [{"indices": r.indices.tolist(), "values": r.data.tolist()} for r in rows[:30]],
        }
    )
    pq.write_table(first, folder / "part-000000.parquet")
    second = pa.table(
        {
            "id": ids[30:],
            "title": [d["title"] for d in docs[30:]],
            "text": [d["text"] for d in docs[30:]],
            "dense": [v.tolist() for v in dense[30:]],
            "sparse_indices": [r.indices.tolist() for r in rows[30:]],
            "sparse_values": [r.data.tolist() for r in rows[30:]],
        }
    )
    pq.write_table(second, folder / "part-000001.parquet")
    with MilvusStore.create(uri, m3, collection="parquet") as store:
        assert store.insert_parquet(str(folder), corpus=corpus) == 60
        assert store.insert_parquet(str(folder), corpus=corpus) == 0  # a rerun inserts nothing twice
        check(store)

    # encoding, interrupted after 25 documents and resumed
    MilvusStore.build(m3, corpus[:25], uri, collection="encoded").close()
    with MilvusStore.open(uri, m3, collection="encoded") as store:
        assert len(store) == 25 and store.add(corpus, chunk_size=20) == 35
        check(store)


def test_reranking_and_reopening_a_dense_store(
    minilm: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    corpus, queries = scifact_slice
    index = SearchIndex.build(minilm, corpus)
    uri = str(tmp_path / "minilm.db")
    MilvusStore.build(minilm, corpus, uri, chunk_size=80).close()
    with MilvusStore.open(uri) as store:  # the model that wrote it, found from the collection
        assert store.modes == ["dense"] and store.embedder.fingerprint() == minilm.fingerprint()
        for hits, expected in zip(
            store.search(queries, top_k=10), index.search(queries, top_k=10), strict=True
        ):
            assert [h.id for h in hits] == [h.id for h in expected]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], rtol=1e-5)
        reranked = store.search(queries[:4], top_k=5, reranker=Overlap(), rerank_top_k=20)
        expected = index.search(queries[:4], top_k=5, reranker=Overlap(), rerank_top_k=20)
        for hits, wanted in zip(reranked, expected, strict=True):
            assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in wanted]
        assert all(h.retrieval_score is not None for hits in reranked for h in hits)


def test_bad_uris_other_dimensions_and_other_models_are_named(
    minilm: Embedder, m3: Embedder, tiny_bert_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="'corpus.txt' is not a Milvus URI"):
        MilvusStore.open("corpus.txt")
    with pytest.raises(ConfigError, match="the folder .*missing' does not exist"):
        MilvusStore.open(str(tmp_path / "missing" / "corpus.db"))
    with pytest.raises(ConfigError, match="could not open the Milvus store 'http://127.0.0.1:1'"):
        MilvusStore.open("http://127.0.0.1:1")
    uri = str(tmp_path / "errors.db")
    with MilvusStore.build(minilm, ["a cat", "a dog"], uri) as store:
        with pytest.raises(ConfigError, match="mode='sparse' needs sparse data"):
            store.search("cat", mode="sparse")
        with pytest.raises(ConfigError, match="fusion='max' is not valid"):
            store.search("cat", fusion="max")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="candidates must be an integer from 10"):
            store.search("cat", candidates=5)
        with pytest.raises(ConfigError, match="holds 384-dimensional vectors, got shape \\(1, 5\\)"):
            store.insert(["x"], ["x"], np.zeros((1, 5), dtype=np.float32))
    # a collection of another dimension, whichever way it is reached
    for attempt in (lambda: MilvusStore.open(uri, m3), lambda: MilvusStore.create(uri, m3, sparse=False)):
        with pytest.raises(ConfigError, match="holds 384-dimensional vectors .* gives 32-dimensional ones"):
            attempt()
    # the same dimension written by another model
    MilvusStore.build(m3, ["a cat", "a dog"], uri, collection="m3", sparse=False).close()
    other = Embedder(tiny_bert_dir, device="cpu")
    with pytest.raises(ConfigError, match="'m3' in .* was written with another model"):
        MilvusStore.open(uri, other, collection="m3")
    with MilvusStore.open(uri, other, collection="m3", check_model=False) as store:
        assert len(store.search("cat", top_k=5)) == 2
    with pytest.raises(ConfigError, match="keeps dense=True, sparse=False, not dense=True, sparse=True"):
        MilvusStore.create(uri, m3, collection="m3")
    with pytest.raises(ConfigError, match="has no collection 'nope' \\(it has \\['bgekit', 'm3'\\]\\)"):
        MilvusStore.open(uri, collection="nope")
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    client.create_collection("foreign", dimension=4)
    client.close()
    with pytest.raises(ConfigError, match="'foreign' .* was not written by bgekit"):
        MilvusStore.open(uri, minilm, collection="foreign")
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ConfigError, match=r"pip install 'bgekit\[milvus\]'"):
        MilvusStore.open(uri)


def test_bgekit_imports_without_pymilvus() -> None:
    code = (
        "import sys; sys.modules['pymilvus'] = None; sys.modules['milvus_lite'] = None\n"
        "import bgekit, bgekit.stores, bgekit.cli.main\n"
        "bgekit.cli.main.build_parser()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_index_into_a_store_then_search_it(
    scifact_slice: tuple[list[dict], list[str]],
    minilm_path: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from bgekit.cli.main import main

    corpus = write_jsonl(tmp_path / "corpus.jsonl", scifact_slice[0][:60])
    uri = str(tmp_path / "cli.db")
    argv = ["index", "--model", minilm_path, "--corpus", corpus, "--store", uri, "--chunk-size", "25"]
    assert main([*argv, "--collection", "scifact"]) == 0
    assert main([*argv, "--collection", "scifact"]) == 0  # a rerun finds every document there
    query = scifact_slice[0][7]["title"]
    capsys.readouterr()
    assert (
        main(
            ["search", "--store", uri, "--collection", "scifact", "--query", query, "--top-k", "2", "--json"]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["query"] == query and len(printed["hits"]) == 2
    assert printed["hits"][0]["id"] == scifact_slice[0][7]["_id"]
    assert {"id", "score", "text"} <= set(printed["hits"][0])
    assert main(["search", "--store", uri, "--query", query]) == 2  # no collection 'bgekit' there
    assert "has no collection 'bgekit'" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "idx")]) == 2  # one destination at a time
    assert main(["search", "--query", query]) == 2
    assert not os.path.exists(tmp_path / "idx")


@pytest.mark.slow
def test_store_search_reproduces_the_mteb_score_on_scifact(
    minilm: Embedder, scifact_dir: Path, tmp_path: Path
) -> None:
    from bgekit.evaluation.datasets import load_dataset
    from bgekit.evaluation.metrics import compute_metrics

    dataset = load_dataset(str(scifact_dir), split="test")
    with MilvusStore.build(minilm, str(scifact_dir / "corpus.jsonl"), str(tmp_path / "scifact.db")) as store:
        assert len(store) == 5183
        query_ids = list(dataset.queries)
        results = store.search([dataset.queries[q] for q in query_ids], top_k=10)
    run = {q: {hit.id: hit.score for hit in hits} for q, hits in zip(query_ids, results, strict=True)}
    scores, _ = compute_metrics(dataset.qrels, run, k_values=[10])
    assert scores["ndcg_at_10"] == pytest.approx(0.6451, abs=5e-5)  # MTEB's all-MiniLM-L6-v2 SciFact score
