"""Fixtures for the command tests: a tiny BGE-M3, a SciFact slice and a toy training file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import build_tiny_m3, toy_rows, write_jsonl


@pytest.fixture(scope="session")
def index_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_m3(tmp_path_factory.mktemp("cli-m3"))


@pytest.fixture(scope="session")
def m3(index_m3_dir: str):  # noqa: ANN201 - the Embedder
    from bgekit import Embedder

    return Embedder(index_m3_dir, device="cpu")


@pytest.fixture(scope="session")
def scifact_slice(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[dict], list[str]]:
    """The first 300 SciFact documents and 20 queries."""
    return scifact_corpus[:300], [q["text"] for q in scifact_queries[:20]]


@pytest.fixture()
def toy_train_file(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "train.jsonl", toy_rows(8, 4, scores=True))
