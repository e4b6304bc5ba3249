"""Real photographs (scikit-image's samples) through the whole path: encode, index, search, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgekit.errors import InputError
from bgekit.multimodal import ImageInputError, MultimodalEmbedder
from bgekit.multimodal.index import MultimodalIndex, image_corpus

CAPTIONS = ["an astronaut", "a cup of coffee", "a tabby cat", "a photographer", "a rocket", "a motorcycle"]


@pytest.fixture(scope="module")
def model(tiny_clip: str) -> MultimodalEmbedder:
    return MultimodalEmbedder(tiny_clip, device="cpu")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, photos: list[str]) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad-images")
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(Path(photos[4]).read_bytes()[:3000])  # rocket.jpg cut short
    deep = folder / "sixteen_bit.png"
    camera = np.asarray(Image.open(photos[3]), dtype=np.uint16) * 257
    Image.fromarray(camera).save(deep)  # mode I;16
    assert Image.open(deep).mode.startswith("I")
    return {
        "missing": str(folder / "missing.png"),
        "garbage": str(garbage),
        "truncated": str(truncated),
        "sixteen_bit": str(deep),
    }


def test_bad_images_are_named_and_the_rest_is_not_lost(model: MultimodalEmbedder, photos, bad_files):
    good = model.encode(images=photos)
    mixed = [photos[0], bad_files["missing"], photos[1], bad_files["garbage"], bad_files["truncated"]]
    mixed += [
        bad_files["sixteen_bit"],
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4, 2), np.uint8),
        photos[2],
    ]
    with pytest.raises(ImageInputError) as info:
        model.encode(images=mixed)
    message = str(info.value)
    assert [position for position, _ in info.value.failures] == [1, 3, 4, 5, 6, 7]
    assert "6 of 9 image(s) cannot be used, nothing was encoded" in message
    assert f"images[1] {bad_files['missing']!r}: file not found" in message
    assert f"images[3] {bad_files['garbage']!r}: not an image file" in message
    assert f"images[4] {bad_files['truncated']!r}: corrupt or truncated image" in message
    assert "images[5]" in message and "unsupported image mode 'I;16'" in message
    assert "images[6] <array (4, 4) float32>: array of dtype float32; give uint8" in message
    assert "images[7] <array (4, 4, 2) uint8>: array of shape (4, 4, 2)" in message
    # the good items of the same call, encoded again without the bad ones, are what they were alone
    again = model.encode(images=[mixed[0], mixed[2], mixed[8]])
    np.testing.assert_allclose(again, good[[0, 1, 2]], atol=1e-6)
    with pytest.raises(ImageInputError, match=r"images\[0\] <int>: int is not an image"):
        model.encode(texts=["a"], images=[3])


def test_determinism_and_input_order(model: MultimodalEmbedder, photos):
    texts = [*CAPTIONS, None, None]
    images = [*photos, photos[0], None]
    texts[-1] = "only a text"
    first = model.encode(texts, images=images, batch_size=3)
    np.testing.assert_array_equal(first, model.encode(texts, images=images, batch_size=3))
    order = [5, 2, 7, 0, 6, 3, 1, 4]
    shuffled = model.encode([texts[i] for i in order], images=[images[i] for i in order], batch_size=2)
    np.testing.assert_allclose(shuffled, first[order], atol=1e-6)


def test_images_count_toward_the_token_budget_by_patch_tokens(tiny_clip: str, photos):
    model = MultimodalEmbedder(tiny_clip, device="cpu", max_tokens_per_batch=40)
    assert model.image_tokens == (32 // 8) ** 2 + 1  # 16 patches and the class token
    seen: list[int] = []
    original = model.model.get_image_features

    def spy(**kwargs):
        seen.append(int(kwargs["pixel_values"].shape[0]))
        return original(**kwargs)

    model.model.get_image_features = spy
    budgeted = model.encode(images=photos)
    assert seen == [2, 2, 2]  # 40 tokens hold two 17-token images
    unbudgeted = MultimodalEmbedder(tiny_clip, device="cpu", max_tokens_per_batch=None).encode(images=photos)
    np.testing.assert_allclose(budgeted, unbudgeted, atol=1e-6)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, photos) -> Path:
    """A folder corpus of the sample photos (links to them, in two sub-folders)."""
    folder = tmp_path_factory.mktemp("photo-corpus")
    for i, path in enumerate(photos):
        sub = folder / ("people" if i in (0, 3) else "things")
        sub.mkdir(exist_ok=True)
        os.symlink(path, sub / os.path.basename(path))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_index_a_folder_and_search_by_text_image_and_both(model: MultimodalEmbedder, photo_folder, tmp_path):
    index = MultimodalIndex.build(model, photo_folder)
    ids = index.ids
    assert ids == [
        "people/astronaut.png",
        "people/camera.png",
        "things/chelsea.png",
        "things/coffee.png",
        "things/motorcycle_left.png",
        "things/rocket.jpg",
    ]
    corpus = model.encode_corpus(images=[str(photo_folder / i) for i in ids])
    np.testing.assert_allclose(index.dense, corpus, atol=1e-6)
    # by image: each photo finds itself first, with cosine 1
    for doc_id in ids:
        hits = index.search(images=str(photo_folder / doc_id), top_k=3)
        assert hits[0].id == doc_id and abs(hits[0].score - 1.0) < 1e-5 and len(hits) == 3
    # by text and by image + text: the ranking of brute-force scores
    for queries, images in (
        (["a tabby cat", "a rocket"], None),
        (["at night"], [str(photo_folder / ids[2])]),
    ):
        query_vectors = model.encode_queries(queries, images=images)
        expected = np.argsort(-(query_vectors @ corpus.T), axis=1, kind="stable")[:, :4]
        results = index.search(queries, top_k=4, images=images)
        assert [[ids.index(h.id) for h in hits] for hits in results] == expected.tolist()
    assert index.image("things/chelsea.png") == str(photo_folder / "things" / "chelsea.png")

    index.save(str(tmp_path / "saved"))
    reopened = MultimodalIndex.load(str(tmp_path / "saved"), device="cpu")
    assert reopened.images == index.images and isinstance(reopened.embedder, MultimodalEmbedder)
    assert reopened.search("a cat", top_k=6) == index.search("a cat", top_k=6)
    assert reopened.search(images=[index.images[0]], top_k=2) == index.search(
        images=[index.images[0]], top_k=2
    )


def test_jsonl_corpus_with_captions_and_a_bad_image(model: MultimodalEmbedder, photos, tmp_path, bad_files):
    rows = [
        {"_id": f"p{i}", "image": os.path.relpath(p, tmp_path), "text": c}
        for i, (p, c) in enumerate(zip(photos, CAPTIONS, strict=True))
    ]
    rows.append({"_id": "t0", "text": "a text-only document about cats"})
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ids, captions, images = image_corpus(str(path))
    assert ids[-1] == "t0" and images[-1] is None and images[0] == photos[0] and captions[2] == "a tabby cat"
    index = MultimodalIndex.build(model, str(path))
    np.testing.assert_allclose(index.dense[:6], model.encode_corpus(CAPTIONS, images=photos), atol=1e-6)
    np.testing.assert_allclose(
        index.dense[6], model.encode_corpus("a text-only document about cats"), atol=1e-6
    )
    hit = index.search("a tabby cat", top_k=7)
    assert {h.id for h in hit} == set(ids) and next(h for h in hit if h.id == "p2").text == "a tabby cat"

    rows[1]["image"] = bad_files["truncated"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ImageInputError, match=r"images\[1\] .*truncated.jpg'?: corrupt or truncated"):
        MultimodalIndex.build(model, str(path), chunk_size=2)
    path.write_text('{"_id": "x"}\n')
    with pytest.raises(InputError, match=r"corpus.jsonl:1: the row has neither an image"):
        image_corpus(str(path))


@pytest.mark.slow
def test_two_devices_give_the_single_device_vectors(tiny_clip: str, model: MultimodalEmbedder, photos):
    texts = [*CAPTIONS[:3], None, None, CAPTIONS[5]]
    with MultimodalEmbedder(tiny_clip, devices=["cpu", "cpu"], worker_timeout=300) as pooled:
        out = pooled.encode(texts, images=photos)
    np.testing.assert_allclose(out, model.encode(texts, images=photos), atol=1e-6)
