"""encode_with_ray on a two-node local Ray cluster against the single-process Embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from bgekit import Embedder  # noqa: E402
from bgekit.cli.main import main  # noqa: E402
from bgekit.distributed import RayEncoder, ShardEncoder, encode_with_ray, read_shards  # noqa: E402
from bgekit.errors import ConfigError, DataFormatError, WorkerError  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet"))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


@pytest.mark.slow  # the real model through two actors: over 30 s on two cores
def test_minilm_on_scifact_equals_single_process(
    ray_cluster, tmp_path: Path, minilm_path: str, scifact_corpus: list[dict]
) -> None:
    docs = scifact_corpus[:200]  # 256 tokens keeps it lean on two cores; the limit is the same on both sides
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = str(tmp_path / "out")
    result = encode_with_ray(minilm_path, corpus, out, num_actors=2, rows_per_shard=100, max_length=256)
    assert (result.shards, result.shards_written, result.rows, result.num_actors) == (2, 2, 200, 2)
    encoded = read_shards(out)
    assert encoded.ids == [d["_id"] for d in docs]
    assert encoded.sparse is None and encoded.meta["dim"] == 384
    expected = Embedder(minilm_path, device="cpu").encode_corpus(docs, max_length=256)
    assert min_cosine(encoded.dense, expected) >= 0.99999


def test_tiny_m3_dense_sparse_colbert_from_parquet_equal_single_process(
    ray_cluster, tmp_path: Path, ray_m3_dir: str, scifact_corpus: list[dict]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = scifact_corpus[:60]
    table = pa.table(
        {
            "id": [int(d["_id"]) for d in docs],  # numeric ids come back as strings
            "title": [d["title"] for d in docs],
            "text": [d["text"] for d in docs],
        }
    )
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=16)
    out = tmp_path / "out"
    result = encode_with_ray(
        ray_m3_dir, str(tmp_path / "corpus.parquet"), str(out), num_actors=2, rows_per_shard=25, colbert=True
    )
    assert (result.shards, result.rows, result.sparse, result.colbert) == (3, 60, True, True)
    encoded = read_shards(str(out))
    assert encoded.ids == [str(int(d["_id"])) for d in docs]
    m3 = Embedder(ray_m3_dir, device="cpu")
    expected = m3.encode_corpus(docs, return_sparse=True, return_colbert_vecs=True, sparse_format="csr")
    assert min_cosine(encoded.dense, expected["dense_vecs"]) >= 0.99999
    lexical = expected["lexical_weights"].tocsr()
    assert encoded.sparse.shape == lexical.shape
    np.testing.assert_array_equal(encoded.sparse.indptr, lexical.indptr)
    np.testing.assert_array_equal(encoded.sparse.indices, lexical.indices)
    np.testing.assert_allclose(encoded.sparse.data, lexical.data, atol=1e-5)
    for got, want in zip(encoded.colbert, expected["colbert_vecs"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the sparse column is what vector stores take: int token ids and float weights
    sparse_type = pq.read_table(out / "part-000000.parquet").schema.field("sparse").type
    assert [sparse_type.field(i).name for i in range(2)] == ["indices", "values"]
    assert sparse_type.field("indices").type.value_type == pa.int32()
    assert sparse_type.field("values").type.value_type == pa.float32()


def test_ray_encoder_in_a_users_own_map_batches_pipeline(
    ray_cluster, tiny_bert_dir: str, scifact_corpus: list[dict]
) -> None:
    import pyarrow as pa
    import ray

    docs = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in scifact_corpus[:30]]
    out = (
        ray.data.from_items(docs)
        .map_batches(
            RayEncoder,
            fn_constructor_kwargs={"model": tiny_bert_dir},
            batch_size=8,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
        )
        .to_arrow_refs()
    )
    table = pa.concat_tables(ray.get(out))
    order = {d["id"]: i for i, d in enumerate(docs)}
    got = sorted(
        zip(table.column("id").to_pylist(), table.column("dense").to_pylist(), strict=True),
        key=lambda r: order[r[0]],
    )
    assert [r[0] for r in got] == [d["id"] for d in docs]
    expected = Embedder(tiny_bert_dir, device="cpu").encode_corpus(docs)
    assert min_cosine(np.array([r[1] for r in got], dtype=np.float32), expected) >= 0.99999


def test_a_killed_actor_still_gives_every_id_once(
    ray_cluster, tmp_path: Path, tiny_bert_dir: str, scifact_corpus: list[dict]
) -> None:
    marker = str(tmp_path / "died-once")

    class DyingEncoder(ShardEncoder):  # defined here, so Ray ships it by value
        def encode_shard(self, shard):  # noqa: ANN001, ANN202
            if shard.number == 1 and not os.path.exists(marker):
                Path(marker).touch()
                os._exit(1)  # the actor process dies mid-job; Ray restarts it and retries the shard
            return super().encode_shard(shard)

    docs = scifact_corpus[:120]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    result = encode_with_ray(
        tiny_bert_dir,
        corpus,
        str(tmp_path / "out"),
        num_actors=2,
        rows_per_shard=20,
        encoder_class=DyingEncoder,
    )
    assert os.path.exists(marker)
    assert (result.shards_written, result.rows) == (6, 120)
    encoded = read_shards(str(tmp_path / "out"))
    assert encoded.ids == [d["_id"] for d in docs]
    expected = Embedder(tiny_bert_dir, device="cpu").encode_corpus(docs)
    assert min_cosine(encoded.dense, expected) >= 0.99999


def test_rerun_after_an_interruption_skips_finished_shards(
    ray_cluster, tmp_path: Path, tiny_bert_dir: str, scifact_corpus: list[dict]
) -> None:
    out = tmp_path / "out"

    class InterruptedEncoder(ShardEncoder):
        def encode_shard(self, shard):  # noqa: ANN001, ANN202
            if shard.number == 5:
                deadline = time.monotonic() + 120
                while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
                    time.sleep(0.2)
                raise RuntimeError("interrupted")
            return super().encode_shard(shard)

    docs = scifact_corpus[:120]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    with pytest.raises(WorkerError, match="the Ray job failed"):
        encode_with_ray(
            tiny_bert_dir, corpus, str(out), num_actors=2, rows_per_shard=20, encoder_class=InterruptedEncoder
        )
    finished = len(parts(out))
    assert 0 < finished < 6
    result = encode_with_ray(tiny_bert_dir, corpus, str(out), num_actors=2, rows_per_shard=20)
    # the other actor may still finish the shard it was on after the job failed: skipped counts it too
    assert finished <= result.shards_skipped < 6, (finished, result)
    assert (result.shards_skipped + result.shards_written, result.rows) == (6, 120)
    assert read_shards(str(out)).ids == [d["_id"] for d in docs]
    again = encode_with_ray(tiny_bert_dir, corpus, str(out), rows_per_shard=20)  # all done: Ray not needed
    assert (again.shards_skipped, again.shards_written, again.num_actors) == (6, 0, 0)
    with pytest.raises(ConfigError, match="another encode .*rows_per_shard"):
        encode_with_ray(tiny_bert_dir, corpus, str(out), rows_per_shard=30)


def test_bad_rows_name_file_line_and_field(ray_cluster, tmp_path: Path, tiny_bert_dir: str) -> None:
    rows = [{"_id": str(i), "text": f"document {i}"} for i in range(10)]
    rows[7] = {"_id": "7", "body": "no text field"}
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    # found by an actor, reported without Ray's wrapping
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:8: missing field 'text'") as caught:
        encode_with_ray(tiny_bert_dir, corpus, str(tmp_path / "out"), num_actors=1, rows_per_shard=5)
    assert "Traceback" not in str(caught.value)
    # the first row is checked before any actor starts
    bad_first = write_jsonl(tmp_path / "first.jsonl", [{"id": "a", "text": 3}])
    with pytest.raises(DataFormatError, match=r"first\.jsonl:1: field 'text' is int"):
        encode_with_ray(tiny_bert_dir, bad_first, str(tmp_path / "out2"))
    with pytest.raises(DataFormatError, match="missing.jsonl: file not found"):
        encode_with_ray(tiny_bert_dir, str(tmp_path / "missing.jsonl"), str(tmp_path / "out3"))
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(DataFormatError, match="id 'a' appears 2 times"):
        encode_with_ray(tiny_bert_dir, dup, str(tmp_path / "out4"), num_actors=1)
    with pytest.raises(ConfigError, match="need a BGE-M3"):
        encode_with_ray(tiny_bert_dir, corpus, str(tmp_path / "out5"), sparse=True)


def test_cli_encode_and_index_through_ray(
    ray_cluster, tmp_path: Path, ray_m3_dir: str, scifact_corpus: list[dict]
) -> None:
    from bgekit.index import SearchIndex

    docs = scifact_corpus[:40]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = tmp_path / "emb"
    common = ["--model", ray_m3_dir, "--ray", "--num-actors", "2", "--shard-rows", "20"]
    assert main(["encode", *common, "--input", corpus, "--output", str(out)]) == 0
    assert parts(out) == ["part-000000.parquet", "part-000001.parquet"]
    assert main(["index", *common, "--corpus", corpus, "--output", str(tmp_path / "idx")]) == 0
    index = SearchIndex.load(str(tmp_path / "idx"))
    built = SearchIndex.build(Embedder(ray_m3_dir, device="cpu"), corpus)
    assert index.ids == built.ids and index.modes == ["dense", "sparse", "hybrid"]
    assert min_cosine(index.dense, built.dense) >= 0.99999
    query = docs[3]["title"]
    assert [h.id for h in index.search(query, top_k=5, mode="hybrid")] == [
        h.id for h in built.search(query, top_k=5, mode="hybrid")
    ]
    assert not (tmp_path / "idx.ray-shards").exists()


def test_without_ray_bgekit_imports_and_the_feature_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import bgekit, bgekit.distributed, bgekit.index\n"
        "from bgekit.errors import ConfigError\n"
        "try:\n"
        "    bgekit.distributed.encode_with_ray\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'bgekit[ray]'" in proc.stdout
