"""`bgekit serve --index` over an image index: text search and text embeddings through the server."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the [serve] extra; the dev set CI installs has it
from fastapi.testclient import TestClient  # noqa: E402

from bgekit.multimodal import MultimodalEmbedder  # noqa: E402
from bgekit.multimodal.index import MultimodalIndex  # noqa: E402
from bgekit.serve import create_app  # noqa: E402


def test_an_image_index_serves_text_search_and_text_embeddings(tiny_clip: str, photos, tmp_path):
    model = MultimodalEmbedder(tiny_clip, device="cpu", query_instruction="a photo of ")
    index = MultimodalIndex.build(model, photos)
    with TestClient(create_app(index)) as client:
        body = client.post("/search", json={"query": ["a cat", "a rocket"], "top_k": 4}).json()
        expected = index.search(["a cat", "a rocket"], top_k=4)
        assert [r["hits"] for r in body["results"]] == [[h.to_dict() for h in hits] for hits in expected]
        assert body["results"][0]["hits"][0]["id"] in [os.fspath(p) for p in photos]

        texts = ["a cat", "a rocket on its pad"]
        data = client.post("/v1/embeddings", json={"input": texts, "input_type": "query"}).json()["data"]
        served = np.array([row["embedding"] for row in data], dtype=np.float32)
        np.testing.assert_allclose(served, model.encode_queries(texts), atol=1e-6)
        plain = client.post("/embed", json={"inputs": texts}).json()
        np.testing.assert_allclose(np.array(plain, dtype=np.float32), model.encode(texts), atol=1e-6)
        info = client.get("/info").json()
        assert info["model"]["dimension"] == 16 and info["model"]["kind"] == "clip"
