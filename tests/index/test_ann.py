"""Approximate dense indexes (IVF, HNSW, SQ8/PQ) against exact search, their save/load, and indexes built
from Parquet shards against indexes built in memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError, DataFormatError
from bgekit.index import SearchIndex
from bgekit.index.ann import AnnConfig, build_faiss_index, exact_top_k, recall_at_k, rescore, search_faiss

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def clustered(n: int, dim: int, seed: int, centers: int = 50, rank: int = 16) -> np.ndarray:
    """Unit vectors as embeddings lie: around ``centers`` directions, spread mostly along a shared
    ``rank``-dimensional subspace, plus a little isotropic noise (uniform noise has no neighbours to find).
    The clusters and subspace are fixed; ``seed`` draws the points. benchmarks/scale_index.py uses the
    same recipe."""
    shape = np.random.default_rng(1234)
    middle = shape.standard_normal((centers, dim)).astype(np.float32)
    basis = shape.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    rng = np.random.default_rng(seed)
    points = middle[rng.integers(0, centers, n)] + rng.standard_normal((n, rank)).astype(np.float32) @ basis
    points += 0.2 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray]:
    return clustered(20_000, 64, seed=0), clustered(100, 64, seed=1)


@pytest.mark.parametrize(
    ("spec", "options", "least"),
    [
        ("ivf", {"nlist": 64, "nprobe": 8}, 0.9),
        ("ivf-sq8", {"nlist": 64, "nprobe": 8}, 0.9),
        ("ivf-pq", {"nlist": 64, "nprobe": 8, "pq_m": 16, "refine_factor": 4, "train_size": 10_000}, 0.85),
        ("hnsw", {}, 0.9),
        ("hnsw-sq8", {}, 0.9),
    ],
)
def test_recall_against_exact_search_on_clustered_vectors(
    synthetic: tuple[np.ndarray, np.ndarray], spec: str, options: dict, least: float
) -> None:
    vectors, queries = synthetic
    config = AnnConfig.parse(spec, **options)
    index = build_faiss_index(config, vectors)
    truth = exact_top_k(vectors, queries, 10)
    _, candidates = search_faiss(index, config, queries, 10 * config.refine_factor)
    scores, found = rescore(vectors, queries, candidates, 10)
    assert recall_at_k(found, truth[1]) >= least
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, vectors[found[:, 0]]), rtol=1e-5)
    if config.kind == "ivf" and config.quantizer is None:  # every cell visited: exact
        _, everything = search_faiss(index, config, queries, 10, nprobe=64)
        assert recall_at_k(everything, truth[1]) == 1.0


def test_exact_top_k_reads_blocks_and_breaks_ties_by_corpus_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import bgekit.index.ann as ann

    monkeypatch.setattr(ann, "_EXACT_BLOCK", 7)
    vectors = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)  # rows 0-4 equal, 5-9 equal...
    scores, positions = exact_top_k(vectors, np.eye(4, dtype=np.float32)[[1]], 6)
    assert positions.tolist() == [[5, 6, 7, 8, 9, 0]] and scores[0, :5].tolist() == [1.0] * 5


@pytest.fixture(scope="module")
def scifact_index(minilm: Embedder, scifact_slice: tuple[list[dict], list[str]]) -> SearchIndex:
    """The 300-document SciFact slice, exact (encoded once for this module)."""
    return SearchIndex.build(minilm, scifact_slice[0])


def approximate(index: SearchIndex, ann: str | AnnConfig) -> SearchIndex:
    return SearchIndex(index.embedder, list(index.ids), list(index.documents), index.dense, None, ann=ann)


@pytest.mark.parametrize("spec", ["ivf", "hnsw", "hnsw-sq8"])
def test_recall_on_minilm_scifact_vectors(
    scifact_index: SearchIndex, scifact_slice: tuple[list[dict], list[str]], spec: str
) -> None:
    queries = scifact_slice[1]
    index = approximate(scifact_index, AnnConfig.parse(spec, nprobe=3, ef_search=16))
    assert index.recall(queries, k=10) >= 0.85
    if spec == "ivf":
        assert index.ann.nlist == 7  # 4 * sqrt(300), at most 300 / 39
        assert index.recall(queries, k=10, nprobe=7) == 1.0
    exact = scifact_index.search(queries, top_k=10)
    for hits, truth in zip(index.search(queries, top_k=10), exact, strict=True):
        same = {h.id: h.score for h in truth}
        # rescored: every hit found carries its exact score
        assert all(h.score == pytest.approx(same[h.id], abs=1e-5) for h in hits if h.id in same)
    assert scifact_index.recall(queries) == 1.0


def test_an_approximate_index_saves_and_loads_the_same_structure(
    scifact_index: SearchIndex, scifact_slice: tuple[list[dict], list[str]], minilm: Embedder, tmp_path: Path
) -> None:
    queries = scifact_slice[1]
    index = approximate(scifact_index, AnnConfig("ivf", nlist=8, nprobe=2))
    index.set_search_params(nprobe=3, refine_factor=2)
    target = tmp_path / "idx"
    index.save(str(target))
    assert sorted(os.listdir(target)) == ["ann.faiss", "bgekit-index.json", "dense.npy", "documents.jsonl"]
    meta = json.loads((target / "bgekit-index.json").read_text())
    assert meta["format"] == 2 and meta["ann_factory"] == "IVF8,Flat"
    assert meta["ann"]["nprobe"] == 3 and meta["ann"]["refine_factor"] == 2
    again = SearchIndex.load(str(target), minilm)
    assert isinstance(again.dense, np.memmap) and again.ann == index.ann
    assert again.search(queries, top_k=10) == index.search(queries, top_k=10)
    assert again.search(queries, top_k=10, nprobe=1) == index.search(queries, top_k=10, nprobe=1)
    os.remove(target / "ann.faiss")  # rebuilt from the saved settings
    assert SearchIndex.load(str(target), minilm).search(queries, top_k=10) == index.search(queries, top_k=10)
    # and back to exact
    again.set_ann("flat")
    assert again.search(queries, top_k=10) == scifact_index.search(queries, top_k=10)


def test_an_index_saved_in_format_1_still_loads(
    scifact_index: SearchIndex, scifact_slice: tuple[list[dict], list[str]], minilm: Embedder, tmp_path: Path
) -> None:
    target = tmp_path / "old"
    os.makedirs(target)
    # the layout bgekit wrote before approximate indexes: format 1, no ann entry
    np.save(target / "dense.npy", scifact_index.dense)
    with open(target / "documents.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, doc in zip(scifact_index.ids, scifact_index.documents, strict=True):
            handle.write(json.dumps({"_id": doc_id, **doc}) + "\n")
    meta = {"format": 1, "modes": ["dense"], "model": minilm.name_or_path, "documents": len(scifact_index)}
    meta["model_identity"] = scifact_index.info["model_identity"]
    (target / "bgekit-index.json").write_text(json.dumps(meta))
    old = SearchIndex.load(str(target), minilm)
    assert old.ann.exact and not isinstance(old.dense, np.memmap)
    queries = scifact_slice[1][:5]
    assert old.search(queries, top_k=10) == scifact_index.search(queries, top_k=10)
    (target / "bgekit-index.json").write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(DataFormatError, match="index format 3 is not supported"):
        SearchIndex.load(str(target), minilm)


def write_shards(folder: Path, index: SearchIndex, sizes: list[int], *, text: bool, meta: dict) -> None:
    """Parquet shards of an index's rows: id, dense (fixed-size list), title/text when ``text``, and the
    sparse struct column bgekit.distributed writes when the index has lexical weights."""
    folder.mkdir()
    assert index.dense is not None
    begin = 0
    for number, size in enumerate(sizes):
        rows = slice(begin, begin + size)
        dense = np.ascontiguousarray(index.dense[rows])
        columns = {
            "id": pa.array(index.ids[rows], pa.string()),
            "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1]),
        }
        if text:
            columns["title"] = pa.array([d["title"] for d in index.documents[rows]])
            columns["text"] = pa.array([d["text"] for d in index.documents[rows]])
        if index.sparse is not None:
            part = index.sparse[rows]
            offsets = pa.array(part.indptr.astype(np.int32))
            columns["sparse"] = pa.StructArray.from_arrays(
                [
                    pa.ListArray.from_arrays(offsets, pa.array(part.indices.astype(np.int32))),
                    pa.ListArray.from_arrays(offsets, pa.array(part.data.astype(np.float32))),
                ],
                names=["indices", "values"],
            )
        table = pa.table(columns).replace_schema_metadata({"bgekit": json.dumps(meta)})
        pq.write_table(table, folder / f"part-{number:06d}.parquet")
        begin += size


def test_from_parquet_equals_building_in_memory(
    scifact_index: SearchIndex,
    scifact_slice: tuple[list[dict], list[str]],
    minilm: Embedder,
    m3: Embedder,
    tmp_path: Path,
) -> None:
    queries = scifact_slice[1]
    meta = {"model_identity": scifact_index.info["model_identity"]}
    write_shards(tmp_path / "shards", scifact_index, [120, 100, 80], text=True, meta=meta)
    built = SearchIndex.from_parquet(minilm, tmp_path / "shards", str(tmp_path / "idx"), batch_rows=50)
    assert isinstance(built.dense, np.memmap) and built.ids == scifact_index.ids
    assert built.documents == scifact_index.documents
    np.testing.assert_array_equal(built.dense, scifact_index.dense)
    assert built.search(queries, top_k=10) == scifact_index.search(queries, top_k=10)
    assert SearchIndex.load(str(tmp_path / "idx")).search(queries[:3]) == scifact_index.search(queries[:3])
    # trained on the same sample: the same IVF structure as in memory
    ivf = SearchIndex.from_parquet(minilm, tmp_path / "shards", str(tmp_path / "ivf"), ann="ivf")
    assert ivf.search(queries, top_k=10) == approximate(scifact_index, "ivf").search(queries, top_k=10)
    # BGE-M3 shards as bgekit.distributed writes them (no text: the corpus supplies it), searched hybrid
    corpus = scifact_slice[0][:60]
    whole = SearchIndex.build(m3, corpus)
    write_shards(
        tmp_path / "m3", whole, [25, 35], text=False, meta={"model_identity": whole.info["model_identity"]}
    )
    from_shards = SearchIndex.from_parquet(m3, tmp_path / "m3", str(tmp_path / "m3-idx"), corpus=corpus)
    assert from_shards.modes == ["dense", "sparse", "hybrid"] and from_shards.documents == whole.documents
    for mode in ("dense", "sparse", "hybrid"):
        assert from_shards.search(queries[:5], mode=mode) == whole.search(queries[:5], mode=mode)  # type: ignore[arg-type]


def test_from_parquet_names_the_file_and_column_at_fault(
    scifact_index: SearchIndex, minilm: Embedder, m3: Embedder, tmp_path: Path
) -> None:
    small = SearchIndex(
        minilm, scifact_index.ids[:20], scifact_index.documents[:20], scifact_index.dense[:20], None
    )
    write_shards(tmp_path / "ok", small, [10, 10], text=True, meta={"model_identity": small.info.get("x")})
    out = str(tmp_path / "idx")
    with pytest.raises(DataFormatError, match=r"part-000000.parquet: no column 'emb'"):
        SearchIndex.from_parquet(minilm, tmp_path / "ok", out, vector_column="emb")
    with pytest.raises(DataFormatError, match="384-dimensional vectors but the embedder gives 32"):
        SearchIndex.from_parquet(m3, tmp_path / "ok", out, check_model=False)
    write_shards(tmp_path / "other", small, [20], text=True, meta={"model_identity": "another-model"})
    with pytest.raises(ConfigError, match="encoded with another model"):
        SearchIndex.from_parquet(minilm, tmp_path / "other", out)
    write_shards(tmp_path / "bare", small, [20], text=False, meta={})
    with pytest.raises(DataFormatError, match="no 'text' column: pass corpus="):
        SearchIndex.from_parquet(minilm, tmp_path / "bare", out)
    with pytest.raises(DataFormatError, match=r"part-000000.parquet: duplicate document id"):
        SearchIndex.from_parquet(minilm, [tmp_path / "ok" / "part-000000.parquet"] * 2, out)
    with pytest.raises(DataFormatError, match="no .parquet files"):
        SearchIndex.from_parquet(minilm, tmp_path, out)
    short = pa.table({"id": ["a", "b"], "text": ["x", "y"], "dense": [[0.1] * 384, [0.2] * 383]})
    pq.write_table(short, tmp_path / "short.parquet")
    with pytest.raises(DataFormatError, match=r"short.parquet: column 'dense', row of id 'b': 383 values"):
        SearchIndex.from_parquet(minilm, tmp_path / "short.parquet", out)
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == [
        "bare",
        "ok",
        "other",
        "short.parquet",
    ]


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("ivx", {}, "ann='ivx' is not valid; choose 'flat', 'ivf', 'hnsw'"),
        ("hnsw-pq", {}, "quantizer='pq' is offered with kind='ivf'"),
        (AnnConfig(), {"quantizer": "sq8"}, "quantizer='sq8' needs an approximate structure"),
        ("ivf", {"nprobe": 0}, "nprobe must be an integer >= 1, got 0"),
        ("ivf", {"nlst": 8}, r"unknown ann option\(s\) \['nlst'\]; valid options"),
        ({"kind": "hnsw", "M": 8}, {}, r"unknown ann option\(s\) \['M'\]"),
    ],
)
def test_bad_ann_settings_are_named(spec: object, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnnConfig.parse(spec, **options)  # type: ignore[arg-type]


def test_bad_ann_settings_for_a_corpus_are_named(scifact_index: SearchIndex) -> None:
    with pytest.raises(ConfigError, match="faiss cannot build 'IVFx,Flat' for 384-dimensional vectors"):
        approximate(scifact_index, "IVFx,Flat")
    with pytest.raises(ConfigError, match="pq_m=7 must divide the vectors' dimension 384"):
        approximate(scifact_index, AnnConfig("ivf", quantizer="pq", pq_m=7))
    with pytest.raises(ConfigError, match="nlist=500 is more IVF cells than the 300 vectors"):
        approximate(scifact_index, AnnConfig("ivf", nlist=500))
    index = approximate(scifact_index, "hnsw")
    with pytest.raises(ConfigError, match="ef_search must be an integer >= 1, got -1"):
        index.search("cat", ef_search=-1)
    with pytest.raises(ConfigError, match="nprobe must be an integer >= 1"):
        index.set_search_params(nprobe=1.5)  # type: ignore[arg-type]
