"""Index files on disk: synced writes, a half-swapped index recovered, damaged files named, no foreign
folder replaced or deleted by `bgekit index`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.errors import DataFormatError
from bgekit.index import SearchIndex
from bgekit.index.search_index import META_FILE

DOCS = [
    {"_id": "a", "title": "Cats", "text": "a cat sits on the mat"},
    {"_id": "b", "title": "Dogs", "text": "a dog runs in the park"},
    {"_id": "c", "title": "Tea", "text": "green tea is brewed with hot water"},
]


@pytest.fixture(scope="module")
def saved(minilm: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "idx"
    SearchIndex.build(minilm, DOCS).save(str(folder))
    return folder


def damaged_copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "idx"))


def test_save_syncs_files_and_folders(
    minilm: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell which file a descriptor is")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    folder = tmp_path / "idx"
    SearchIndex.build(minilm, DOCS).save(str(folder))
    names = {os.path.basename(p) for p in synced}
    assert {"dense.npy", "documents.jsonl", META_FILE} <= names  # the files, before the rename
    assert str(tmp_path) in synced  # and the folder that holds the renamed index


def test_a_crash_between_the_two_renames_is_recovered_on_load(
    minilm: Embedder, saved: Path, tmp_path: Path
) -> None:
    folder = damaged_copy(saved, tmp_path)
    newer = SearchIndex.build(minilm, [*DOCS, {"_id": "d", "text": "espresso is strong coffee"}])
    newer.save(f"{folder}.tmp{os.getpid()}")  # the staged index, complete
    os.replace(folder, f"{folder}.old{os.getpid()}")  # the first rename of a save, then the crash
    loaded = SearchIndex.load(str(folder))
    assert loaded.ids == ["a", "b", "c", "d"]  # the staged (complete) index took its place
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    assert loaded.search("coffee", top_k=1)[0].id == "d"


def test_damaged_files_are_named(saved: Path, tmp_path: Path) -> None:
    folder = damaged_copy(saved, tmp_path)
    meta_path, dense_path, docs_path = folder / META_FILE, folder / "dense.npy", folder / "documents.jsonl"
    meta, dense = meta_path.read_text(), dense_path.read_bytes()

    meta_path.write_text("[1, 2]")
    with pytest.raises(DataFormatError, match=rf"{META_FILE}: expected a JSON object, found list"):
        SearchIndex.load(str(folder))
    meta_path.write_text(meta)

    dense_path.write_bytes(dense[: len(dense) // 2])
    with pytest.raises(DataFormatError, match=r"dense\.npy: damaged index file"):
        SearchIndex.load(str(folder))

    np.save(dense_path, np.zeros(3 * 384, dtype=np.float32))
    with pytest.raises(DataFormatError, match=r"dense\.npy: expected a 2-D array"):
        SearchIndex.load(str(folder))

    np.save(dense_path, np.zeros((2, 384), dtype=np.float32))
    with pytest.raises(DataFormatError, match=r"dense\.npy: has 2 rows but .*documents\.jsonl holds 3"):
        SearchIndex.load(str(folder))
    dense_path.write_bytes(dense)

    docs_path.write_text("".join(docs_path.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(DataFormatError, match=rf"{META_FILE}: records 3 documents but .* holds 2"):
        SearchIndex.load(str(folder))


def test_a_damaged_checkpoint_chunk_is_named(minilm: Embedder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "partial"
    SearchIndex.build(minilm, DOCS, chunk_size=2, checkpoint_dir=str(checkpoint))
    chunk = checkpoint / "chunk-000000.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(DataFormatError, match=r"chunk-000000\.npz: damaged checkpoint chunk"):
        SearchIndex.build(minilm, DOCS, chunk_size=2, checkpoint_dir=str(checkpoint))
