"""Fixtures for the inference tests: tiny random M3 and decoder checkpoints with real (trained-in-fixture)
tokenizers, built once per run (builders in tests/builders.py; the reranker checkpoints are in tests/conftest.py),
and writable copies of the real MiniLM (as an embedder and as a cross-encoder body) for the fast paths.
"""

from __future__ import annotations

import shutil

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


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A writable copy of MiniLM, so the ONNX cache lands beside it as it does for users."""
    target = tmp_path_factory.mktemp("minilm") / "model"
    shutil.copytree(minilm_path, target)
    return str(target)


@pytest.fixture(scope="module")
def minilm_cross_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A MiniLM-sized cross-encoder: the real MiniLM body with a seeded fresh 1-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("minilm-ce") / "model"
    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)
