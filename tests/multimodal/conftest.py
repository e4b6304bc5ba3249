"""Tiny random CLIP (BGE-VL architecture) with the real CLIP tokenizer, and real photographs.

The tokenizer is OpenAI CLIP's byte-level BPE (49,408 tokens), built from the ``bpe_simple_vocab_16e6``
file that the ``open_clip_torch`` wheel ships (installed ``--no-deps``: only that file is read, open_clip is
never imported). The photographs are scikit-image's bundled sample images (``skimage/data``, shipped in the
wheel, no download).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

SAMPLE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "camera.png",
    "rocket.jpg",
    "motorcycle_left.png",
)
"""Real photographs of scikit-image's data folder; camera.png is grayscale (mode L), the others RGB."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        install = {
            "open_clip": "pip install --no-deps open_clip_torch==3.3.0",
            "skimage": "pip install scikit-image",
        }
        raise RuntimeError(
            f"the multimodal tests read files of the {name} package: {install.get(name, name)}"
        )
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def photo_dir() -> Path:
    """scikit-image's sample photographs (read in place, never copied into the repository)."""
    folder = _package_dir("skimage") / "data"
    missing = [name for name in SAMPLE_PHOTOS if not (folder / name).is_file()]
    assert not missing, f"scikit-image's wheel lacks {missing} in {folder}"
    return folder


@pytest.fixture(scope="session")
def photos(photo_dir: Path) -> list[str]:
    return [str(photo_dir / name) for name in SAMPLE_PHOTOS]


def _bytes_to_unicode() -> dict[int, str]:
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    return bytes_to_unicode()


def write_clip_tokenizer(folder: Path) -> None:
    """Save OpenAI CLIP's tokenizer (vocab.json + merges.txt, then the fast tokenizer) into ``folder``."""
    from transformers import CLIPTokenizerFast

    vocab_path = _package_dir("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(vocab_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    raw = folder / "raw-tokenizer"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (raw / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    tokenizer = CLIPTokenizerFast(
        vocab_file=str(raw / "vocab.json"),
        merges_file=str(raw / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    assert len(tokenizer) == 49408, len(tokenizer)
    tokenizer.save_pretrained(folder)


def build_tiny_clip(folder: Path, tokenizer_dir: Path, *, seed: int = 0) -> str:
    """A random CLIPModel (2 layers per tower, hidden 32, 32x32 images in 8x8 patches, projection 16)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return str(folder)


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    write_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer_dir: Path) -> str:
    """A tiny random BGE-VL (CLIP) folder: weights, the real CLIP tokenizer, a CLIP image processor."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), clip_tokenizer_dir)
