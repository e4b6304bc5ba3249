"""``bgekit index`` and ``bgekit search`` end to end: exact and approximate indexes, M3 rescoring, and
replacing an index only when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bgekit import Embedder
from bgekit.index import SearchIndex
from bgekit.index.search_index import META_FILE
from tests.builders import write_jsonl

DOCS = [  # the documents of tests/index/test_index_files.py
    {"_id": "a", "title": "Cats", "text": "a cat sits on the mat"},
    {"_id": "b", "title": "Dogs", "text": "a dog runs in the park"},
    {"_id": "c", "title": "Tea", "text": "green tea is brewed with hot water"},
]


def test_cli_index_then_search(
    scifact_slice: tuple[list[dict], list[str]],
    minilm_path: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from bgekit.cli.main import main

    corpus = write_jsonl(tmp_path / "corpus.jsonl", scifact_slice[0][:60])
    out = str(tmp_path / "idx")
    assert (
        main(["index", "--model", minilm_path, "--corpus", corpus, "--output", out, "--chunk-size", "25"])
        == 0
    )
    assert not os.path.exists(out + ".partial")
    index = SearchIndex.load(out)
    assert len(index) == 60
    query = scifact_slice[0][7]["title"]
    assert index.search(query, top_k=1)[0].id == scifact_slice[0][7]["_id"]
    capsys.readouterr()
    assert main(["search", "--index", out, "--query", query, "--top-k", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["query"] == query and printed["hits"][0]["id"] == scifact_slice[0][7]["_id"]
    assert (
        main(["index", "--model", minilm_path, "--corpus", str(tmp_path / "missing.jsonl"), "--output", out])
        == 2
    )


def test_cli_search_m3_rescore(
    m3: Embedder,
    index_m3_dir: str,
    scifact_slice: tuple[list[dict], list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from bgekit.cli.main import main
    from bgekit.index import M3Rescorer

    corpus, queries = scifact_slice
    index = SearchIndex.build(m3, corpus[:40])
    index.save(str(tmp_path / "idx"))
    capsys.readouterr()
    argv = ["search", "--index", str(tmp_path / "idx"), "--query", queries[1], "--m3-rescore", "--json"]
    assert main([*argv, "--top-k", "3", "--rerank-top-k", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = index.search(queries[1], top_k=3, reranker=M3Rescorer(m3), rerank_top_k=10)
    assert [h["id"] for h in printed["hits"]] == [h.id for h in expected]
    assert main([*argv, "--reranker", index_m3_dir]) == 2  # one second stage at a time


def test_cli_index_with_ann_then_search_with_knobs(
    scifact_slice: tuple[list[dict], list[str]],
    minilm_path: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from bgekit.cli.main import main

    corpus = write_jsonl(tmp_path / "corpus.jsonl", scifact_slice[0][:80])
    out = str(tmp_path / "idx")
    argv = ["index", "--model", minilm_path, "--corpus", corpus, "--output", out, "--no-progress"]
    assert main([*argv, "--ann", "hnsw-sq8", "--hnsw-m", "8", "--ef-search", "20"]) == 0
    meta = json.loads(Path(out, "bgekit-index.json").read_text())
    assert meta["ann_factory"] == "HNSW8_SQ8" and meta["ann"]["ef_search"] == 20
    query = scifact_slice[0][7]["title"]
    capsys.readouterr()
    assert (
        main(["search", "--index", out, "--query", query, "--top-k", "2", "--ef-search", "40", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == scifact_slice[0][7]["_id"]
    argv[argv.index(out)] = str(tmp_path / "other")
    assert main([*argv, "--ann", "ivf-pq", "--pq-m", "7"]) == 2  # a clear error, not a traceback
    assert "pq_m=7 must divide" in capsys.readouterr().err


def test_cli_index_replaces_only_its_own_index_and_only_when_asked(
    minilm_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgekit.cli.main import main

    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    out = tmp_path / "idx"
    command = ["index", "--model", minilm_path, "--corpus", corpus, "--output", str(out), "--no-progress"]
    assert main(command) == 0
    before = (out / "dense.npy").read_bytes()
    capsys.readouterr()
    assert main(command) == 2
    assert "already holds an index; pass --overwrite" in capsys.readouterr().err
    assert main([*command, "--overwrite"]) == 0
    assert SearchIndex.load(str(out)).ids == ["a", "b", "c"]
    assert (out / "dense.npy").read_bytes() == before

    # a folder of the user's own: neither replaced nor, as a checkpoint folder, deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([*command[:-2], str(mine), "--overwrite"]) == 2
    assert "is not a bgekit index" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "fresh.partial").mkdir()
    (tmp_path / "fresh.partial" / "notes.txt").write_text("keep me too")
    assert main([*command[:-2], str(tmp_path / "fresh")]) == 2
    assert "is not a build checkpoint of bgekit" in capsys.readouterr().err
    assert (tmp_path / "fresh.partial" / "notes.txt").read_text() == "keep me too"
    assert json.loads((out / META_FILE).read_text())["documents"] == 3
