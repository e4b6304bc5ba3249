"""Fixtures for the inference tests: tiny random M3 and decoder checkpoints with real (trained-in-fixture)
tokenizers, built once per run (builders in tests/builders.py; the reranker checkpoints are in tests/conftest.py).
"""

from __future__ import annotations

import pytest

from tests.builders import build_tiny_decoder, build_tiny_m3


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BGE-M3-shaped checkpoint with its two head files."""
    return build_tiny_m3(tmp_path_factory.mktemp("tiny-m3"))


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """Tiny decoders keyed by (arch, padding side): llama/mistral/qwen2/gemma2, left and right padding."""
    out: dict[tuple[str, str], str] = {}
    for arch in ("llama", "mistral", "qwen2", "gemma2"):
        for side in ("left", "right"):
            out[(arch, side)] = build_tiny_decoder(
                tmp_path_factory.mktemp(f"tiny-{arch}-{side}"), arch, padding_side=side
            )
    return out
