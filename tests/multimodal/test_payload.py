"""Request images: data URIs and base64 decode to the same vectors as the files; nothing else gets in."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from bgekit.errors import InputError
from bgekit.multimodal import MultimodalEmbedder
from bgekit.multimodal.payload import decode_image_reference


def test_data_uri_base64_and_allowed_files_give_the_file_vectors(tiny_clip: str, photos, photo_dir):
    model = MultimodalEmbedder(tiny_clip, device="cpu")
    with open(photos[2], "rb") as handle:
        raw = handle.read()
    encoded = base64.b64encode(raw).decode()
    refs = [
        decode_image_reference(f"data:image/png;base64,{encoded}", "input[0].image"),
        decode_image_reference(encoded, "input[1].image"),
        decode_image_reference({"path": os.path.basename(photos[2])}, "input[2].image", file_root=photo_dir),
    ]
    assert refs[0] == raw and refs[1] == raw and refs[2] == os.path.realpath(photos[2])
    out = model.encode(["a cat"] * 3, images=refs)
    np.testing.assert_allclose(out, model.encode(["a cat"] * 3, images=[photos[2]] * 3), atol=1e-6)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        ("https://example.com/cat.png", {}, r"input\[0\]\.image: images are not fetched from URLs"),
        ("file:///etc/passwd", {}, "not fetched from URLs"),
        ("data:text/plain;base64,aGk=", {}, "holds 'text/plain', not an image"),
        ("data:image/png,raw", {}, "expected a base64 data URI"),
        ("not base64 !", {}, "not valid base64"),
        ("", {}, "the image is empty"),
        (base64.b64encode(b"x" * 100).decode(), {"max_bytes": 50}, "larger than 50 bytes"),
        ({"path": "cat.png"}, {}, "this server reads no image files"),
        ({"path": "../../etc/passwd"}, {"file_root": "/tmp"}, "outside the folder"),
        ({"path": "a", "url": "b"}, {}, "one string field 'path'"),
        (12, {}, "got int"),
    ],
)
def test_bad_request_images_are_refused(value, kwargs, message):
    with pytest.raises(InputError, match=message):
        decode_image_reference(value, "input[0].image", **kwargs)
