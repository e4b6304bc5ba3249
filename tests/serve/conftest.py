"""Fixtures for the server tests: a tiny BGE-M3 checkpoint (dense + sparse + ColBERT heads)."""

from __future__ import annotations

import pytest

from tests.builders import build_tiny_m3


@pytest.fixture(scope="session")
def index_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_m3(tmp_path_factory.mktemp("serve-m3"))
