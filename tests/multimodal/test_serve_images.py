"""Images over HTTP: ``{"text", "image"}`` items on ``/v1/embeddings`` and ``image`` on ``/search``."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the [serve] extra; the dev set CI installs has it
from fastapi.testclient import TestClient  # noqa: E402

from bgekit import Embedder  # noqa: E402
from bgekit.index import SearchIndex  # noqa: E402
from bgekit.multimodal import MultimodalEmbedder  # noqa: E402
from bgekit.multimodal.index import MultimodalIndex  # noqa: E402
from bgekit.serve import ServerConfig, create_app  # noqa: E402


def data_uri(path: str) -> str:
    mime = "image/jpeg" if path.endswith(".jpg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def bare_base64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture(scope="module")
def model(tiny_clip: str) -> MultimodalEmbedder:
    return MultimodalEmbedder(tiny_clip, device="cpu", query_instruction="a photo of ")


@pytest.fixture(scope="module")
def index(model: MultimodalEmbedder, photos: list[str]) -> MultimodalIndex:
    return MultimodalIndex.build(model, photos)


def vectors_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_text_image_and_composed_items_equal_encode(model, photos, photo_dir):
    with TestClient(create_app(embedder=model), base_url="http://localhost") as client:
        items = [
            "a cat on a sofa",
            {"image": data_uri(photos[2])},
            {"text": "make it night", "image": bare_base64(photos[4])},
            {"image": data_uri(photos[3])},  # camera.png is grayscale: converted to RGB as encode does
            {"text": "only a text, as an object"},
        ]
        response = client.post("/v1/embeddings", json={"input": items})
        served = vectors_of(response)
        expected = np.stack(
            [
                model.encode("a cat on a sofa"),
                model.encode(images=photos[2]),
                model.encode("make it night", images=photos[4]),
                model.encode(images=photos[3]),
                model.encode("only a text, as an object"),
            ]
        )
        np.testing.assert_allclose(served, expected, atol=1e-5)
        usage = response.json()["usage"]
        text_tokens = sum(
            len(model.tokenize([t], model.max_length)[0]["input_ids"])
            for t in ["a cat on a sofa", "make it night", "only a text, as an object"]
        )
        assert usage["prompt_tokens"] == text_tokens + 3 * model.image_tokens

        # queries take the query instruction on their text part, as encode_queries
        query = [{"text": "make it night", "image": data_uri(photos[1])}, {"image": data_uri(photos[0])}]
        served = vectors_of(client.post("/v1/embeddings", json={"input": query, "input_type": "query"}))
        expected = model.encode_queries(["make it night", None], images=[photos[1], photos[0]])
        np.testing.assert_allclose(served, expected, atol=1e-5)

        # base64 output and dimensions go through the same rows as for texts
        response = client.post(
            "/v1/embeddings",
            json={"input": [{"image": data_uri(photos[5])}], "encoding_format": "base64", "dimensions": 8},
        )
        row = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), "<f4")
        cut = model.encode(images=photos[5])[:8]
        np.testing.assert_allclose(row, cut / np.linalg.norm(cut), atol=1e-5)


def test_bad_images_and_server_files_are_400_naming_the_item(model, photos, photo_dir, tmp_path):
    good = {"image": data_uri(photos[3])}  # camera.png, small enough for four in one body
    with TestClient(create_app(embedder=model), base_url="http://localhost") as client:

        def error(items) -> str:
            response = client.post("/v1/embeddings", json={"input": items})
            assert response.status_code == 400, response.text
            message = response.json()["error"]["message"]
            assert "Traceback" not in message
            return message

        assert error([good, "text", good, {"image": "not base64!!"}]).startswith("input[3].image: ")
        assert "not valid base64" in error([good, "text", good, {"image": "not base64!!"}])
        not_an_image = base64.b64encode(b"hello, not a picture").decode()
        assert error([{"image": not_an_image}]).startswith("input[0].image: not an image file")
        assert error([{"image": "https://example.com/cat.jpg"}]).startswith("input[0].image: ")
        assert error([{}]).startswith("input[0]: ")
        # no --image-root: no file on the server is ever read
        assert error([good, {"image": {"path": photos[0]}}]).startswith(
            "input[1].image: this server reads no image files"
        )

    config = ServerConfig(image_root=str(photo_dir))
    with TestClient(create_app(embedder=model, config=config), base_url="http://localhost") as client:
        body = {"input": [{"image": {"path": "chelsea.png"}}, {"text": "x", "image": {"path": "rocket.jpg"}}]}
        served = vectors_of(client.post("/v1/embeddings", json=body))
        np.testing.assert_allclose(served[0], model.encode(images=photos[2]), atol=1e-5)
        np.testing.assert_allclose(served[1], model.encode("x", images=photos[4]), atol=1e-5)
        for outside in ("../" + os.path.basename(photo_dir) + "_x/a.png", "/etc/passwd", "../../a.png"):
            response = client.post("/v1/embeddings", json={"input": [{"image": {"path": outside}}]})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["message"].startswith("input[0].image: ")
            assert "outside the folder" in response.json()["error"]["message"]
        missing = client.post("/v1/embeddings", json={"input": [{"image": {"path": "no-such.png"}}]})
        assert missing.status_code == 400 and "file not found" in missing.json()["error"]["message"]
    with pytest.raises(Exception, match="image_root"):
        ServerConfig(image_root=str(tmp_path / "absent"))


def test_a_text_only_server_refuses_images(minilm_path):
    embedder = Embedder(minilm_path, device="cpu")
    index = SearchIndex.build(embedder, ["a cat sleeps on the sofa", "a rocket on its launch pad"])
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with TestClient(create_app(index), base_url="http://localhost") as client:
        response = client.post("/v1/embeddings", json={"input": ["a cat", {"image": png}]})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("input[1].image: ")
        response = client.post("/search", json={"image": png})
        assert response.status_code == 400 and "not multimodal" in response.json()["error"]["message"]
        # text items as objects still work on a text server, and equal encode
        texts = ["a cat", {"text": "a rocket"}]
        served = vectors_of(client.post("/v1/embeddings", json={"input": texts}))
        np.testing.assert_allclose(served, embedder.encode(["a cat", "a rocket"]), atol=1e-5)


def test_search_by_image_finds_the_same_photo_first(model, index, photos):
    config = ServerConfig(payload_limit=8_000_000)  # six photos as base64 in one body
    with TestClient(create_app(index, config=config), base_url="http://localhost") as client:
        body = client.post("/search", json={"image": [data_uri(p) for p in photos], "top_k": 3})
        assert body.status_code == 200, body.text
        results = body.json()["results"]
        assert [r["hits"][0]["id"] for r in results] == [os.fspath(p) for p in photos]
        expected = index.search(images=photos, top_k=3)
        assert [r["hits"] for r in results] == [[h.to_dict() for h in hits] for hits in expected]

        composed = client.post(
            "/search", json={"query": "at night", "image": bare_base64(photos[1]), "top_k": 2}
        ).json()["results"]
        expected_one = index.search("at night", top_k=2, images=photos[1])
        assert composed[0]["query"] == "at night"
        assert composed[0]["hits"] == [h.to_dict() for h in expected_one]

        mismatch = client.post("/search", json={"query": ["a", "b"], "image": [data_uri(photos[0])]})
        assert mismatch.status_code == 400 and "pair up" in mismatch.json()["error"]["message"]
        bad = client.post("/search", json={"image": [data_uri(photos[0]), "@@"]})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("image[1]: ")
        # text search is unchanged
        text = client.post("/search", json={"query": "a cat", "top_k": 2}).json()["results"]
        assert text[0]["hits"] == [h.to_dict() for h in index.search("a cat", top_k=2)]


def test_the_image_root_flag(photo_dir):
    import argparse

    from bgekit.cli.serve import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).image_root is None
    config = config_from_args(parser.parse_args(["--image-root", str(photo_dir)]))
    assert config.image_root == str(photo_dir)


def test_serve_model_on_a_clip_folder_serves_images(tiny_clip, photos, model):
    import argparse

    from bgekit.cli.serve import add_arguments, build_app

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args(["--model", tiny_clip]))
    with TestClient(app, base_url="http://localhost") as client:
        got = vectors_of(client.post("/v1/embeddings", json={"input": [{"image": bare_base64(photos[0])}]}))
    np.testing.assert_allclose(got, model.encode(images=[photos[0]]), atol=1e-5)
