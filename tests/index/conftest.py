"""Fixtures for index tests: a SciFact slice, MiniLM, and a tiny BGE-M3 (dense + sparse) checkpoint."""

from __future__ import annotations

import pytest

from tests.builders import build_tiny_m3


@pytest.fixture(scope="session")
def index_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_m3(tmp_path_factory.mktemp("index-m3"))


@pytest.fixture(scope="session")
def m3(index_m3_dir: str):  # noqa: ANN201 - the Embedder
    """The tiny BGE-M3 loaded once for every test that searches with it."""
    from bgekit import Embedder

    return Embedder(index_m3_dir, device="cpu")


@pytest.fixture(scope="session")
def scifact_slice(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[dict], list[str]]:
    """The first 300 SciFact documents and 20 queries."""
    return scifact_corpus[:300], [q["text"] for q in scifact_queries[:20]]


@pytest.fixture(scope="session")
def minilm(minilm_path: str):  # noqa: ANN201 - the Embedder
    from bgekit import Embedder

    return Embedder(minilm_path, device="cpu")
