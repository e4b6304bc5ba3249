"""CLIP-based BGE-VL: bgekit's embeddings equal transformers' CLIPModel with MegaPairs' encoding rule.

The reference below is BGE-VL's published encoding rule (``modeling_MMRet_CLIP.py`` in
FlagOpen/FlagEmbedding research/BGE-VL and on the hub, Apache-2.0), run on ``transformers.CLIPModel`` and
``CLIPProcessor`` as that file does: texts through the processor with ``padding=True``; images opened with
PIL and ``.convert("RGB")``; text -> normalize(get_text_features), image -> normalize(get_image_features),
image + text -> normalize(get_text_features + get_image_features).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bgekit.errors import ConfigError, InputError
from bgekit.multimodal import MultimodalEmbedder

TEXTS = [
    "an astronaut in a white suit",
    "a cup of coffee on a saucer",
    "a cat",
    "a man with a camera on a tripod, black and white",
    "a rocket on its launch pad",
    "a red motorcycle",
]


def reference(folder: str, texts: list[str] | None, images: list[str] | None) -> np.ndarray:
    """BGE-VL's encoding rule on transformers' CLIPModel (see the module docstring)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder, use_fast=False)
    with torch.no_grad():
        text_f = image_f = None
        if texts is not None:
            text_f = model.get_text_features(**processor(text=texts, return_tensors="pt", padding=True))
        if images is not None:
            pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
            image_f = model.get_image_features(pixels["pixel_values"])
        if text_f is not None and image_f is not None:
            out = text_f + image_f
        else:
            out = text_f if text_f is not None else image_f
        return torch.nn.functional.normalize(out, dim=-1).numpy()


@pytest.fixture(scope="module")
def model(tiny_clip: str) -> MultimodalEmbedder:
    return MultimodalEmbedder(tiny_clip, device="cpu")


def test_text_image_and_composed_equal_the_reference(model: MultimodalEmbedder, tiny_clip: str, photos):
    np.testing.assert_allclose(model.encode(TEXTS), reference(tiny_clip, TEXTS, None), atol=1e-5)
    np.testing.assert_allclose(model.encode(images=photos), reference(tiny_clip, None, photos), atol=1e-5)
    composed = model.encode(TEXTS, images=photos)
    np.testing.assert_allclose(composed, reference(tiny_clip, TEXTS, photos), atol=1e-5)
    assert composed.shape == (6, 16) and composed.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(composed, axis=1), 1.0, atol=1e-6)


def test_mixed_items_in_one_call_equal_each_kind_alone(model: MultimodalEmbedder, tiny_clip: str, photos):
    # text-only, image-only and composed items batched together, in an order the engine will sort
    texts = [TEXTS[0], None, TEXTS[2], TEXTS[3], None]
    images = [None, photos[1], photos[2], None, photos[4]]
    out = model.encode(texts, images=images, batch_size=2)
    np.testing.assert_allclose(out[0], reference(tiny_clip, [TEXTS[0]], None)[0], atol=1e-5)
    np.testing.assert_allclose(out[1], reference(tiny_clip, None, [photos[1]])[0], atol=1e-5)
    np.testing.assert_allclose(out[2], reference(tiny_clip, [TEXTS[2]], [photos[2]])[0], atol=1e-5)
    np.testing.assert_allclose(out[3], reference(tiny_clip, [TEXTS[3]], None)[0], atol=1e-5)
    np.testing.assert_allclose(out[4], reference(tiny_clip, None, [photos[4]])[0], atol=1e-5)


def test_input_forms_give_the_same_vectors(model: MultimodalEmbedder, photos):
    path = photos[0]
    with open(path, "rb") as handle:
        data = handle.read()
    pil = Image.open(path)
    array = np.asarray(Image.open(path).convert("RGB"))
    from_path = model.encode(images=path)
    assert from_path.shape == (16,)
    for other in (data, pil, array, os.fspath(path)):
        np.testing.assert_array_equal(model.encode(images=other), from_path)
    np.testing.assert_array_equal(model.encode(images=array[None])[0], from_path)  # a 4-d batch
    gray = photos[3]  # camera.png is mode L: converted to RGB as the reference does
    np.testing.assert_array_equal(
        model.encode(images=np.asarray(Image.open(gray))), model.encode(images=gray)
    )


def test_queries_and_corpus_apply_their_instructions(tiny_clip: str, photos):
    model = MultimodalEmbedder(
        tiny_clip, device="cpu", query_instruction="find: ", passage_instruction="caption: "
    )
    q = model.encode_queries(["a cat"], images=[photos[2]])
    np.testing.assert_allclose(q, reference(tiny_clip, ["find: a cat"], [photos[2]]), atol=1e-5)
    p = model.encode_corpus([{"title": "Chelsea", "text": "a cat"}], images=[photos[2]])
    np.testing.assert_allclose(p, reference(tiny_clip, ["caption: Chelsea a cat"], [photos[2]]), atol=1e-5)
    # images alone get no instruction: nothing to put it before
    np.testing.assert_array_equal(model.encode_queries(images=photos[:2]), model.encode(images=photos[:2]))


def test_long_texts_are_truncated_to_the_text_tower(model: MultimodalEmbedder):
    long = " ".join(["word"] * 200)
    out = model.encode([long, "short"])
    truncated = model.tokenizer.decode(
        model.tokenizer(long, truncation=True, max_length=77)["input_ids"][1:-1]
    )
    np.testing.assert_allclose(out[0], model.encode(truncated), atol=1e-6)


def test_save_pretrained_round_trip(model: MultimodalEmbedder, tmp_path, photos):
    tuned = MultimodalEmbedder(model.folder, device="cpu", query_instruction="find: ", normalize=False)
    tuned.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "bgekit.json").read_text())["multimodal_embedder"]
    assert saved["query_instruction"] == "find: " and saved["normalize"] is False and saved["kind"] == "clip"
    again = MultimodalEmbedder(tmp_path / "saved", device="cpu")
    assert again.settings == tuned.settings and again.settings_origin["normalize"] == "bgekit.json"
    for call in (
        lambda m: m.encode_queries(TEXTS[:3], images=photos[:3]),
        lambda m: m.encode_corpus(images=photos),
        lambda m: m.encode(TEXTS),
    ):
        np.testing.assert_allclose(call(again), call(tuned), atol=1e-6)
    assert again.fingerprint(include_runtime=False) != model.fingerprint(include_runtime=False)


def test_bad_arguments_are_refused(model: MultimodalEmbedder, tiny_clip: str, minilm_path: str):
    with pytest.raises(ConfigError, match="unknown keyword argument.*poolin"):
        MultimodalEmbedder(tiny_clip, poolin="cls")
    with pytest.raises(ConfigError, match="'bert' model.*use bgekit.Embedder"):
        MultimodalEmbedder(minilm_path)
    with pytest.raises(InputError, match="2 text.*3 image"):
        model.encode(["a", "b"], images=[None, None, None])
    with pytest.raises(InputError, match="item 1 has neither"):
        model.encode(["a", None])
    with pytest.raises(InputError, match="both are None"):
        model.encode()
    with pytest.raises(InputError, match=r"texts\[1\] is 3"):
        model.encode(["a", 3])


def test_bf16_stays_close_to_fp32(model: MultimodalEmbedder, tiny_clip: str, photos):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 may be emulated on this CPU
        half = MultimodalEmbedder(tiny_clip, device="cpu", dtype="bf16")
    assert half.dtype == "bf16"
    low, full = half.encode(TEXTS, images=photos), model.encode(TEXTS, images=photos)
    assert low.dtype == np.float32
    assert np.min(np.sum(low * full, axis=1)) > 0.99
