"""A text that tokenizes to nothing is refused, naming its position, never pooled from padding."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgekit import Embedder
from bgekit.errors import InputError
from tests.builders import build_tiny_decoder


@pytest.fixture(scope="module")
def qwen2_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    # Qwen2's tokenizer adds neither BOS nor EOS: "" becomes no token at all
    folder = build_tiny_decoder(Path(tmp_path_factory.mktemp("tiny-qwen2")), "qwen2")
    return Embedder(folder, device="cpu")


def test_a_text_with_no_tokens_is_refused_by_position(qwen2_embedder: Embedder) -> None:
    assert qwen2_embedder.tokenize([""], 32) == [{"input_ids": []}]
    with pytest.raises(InputError, match=r"position\(s\) \[1, 3\] tokenize to no tokens"):
        qwen2_embedder.encode(["a text", "", "another text", ""])
    assert qwen2_embedder.encode(["a text", "another text"]).shape == (2, 32)


def test_the_server_path_refuses_it_too(qwen2_embedder: Embedder) -> None:
    features = qwen2_embedder.tokenize(["a text", ""], 32)
    with pytest.raises(InputError, match=r"\[1\]"):
        qwen2_embedder.encode_features(features)


def test_device_pool_positions_count_from_the_whole_call(tmp_path: Path) -> None:
    folder = build_tiny_decoder(tmp_path, "qwen2")
    with (
        Embedder(folder, devices=["cpu", "cpu"]) as embedder,
        pytest.raises(InputError, match=r"position\(s\) \[2\]"),
    ):
        embedder.encode(["a text", "more text", "", "the end"])
