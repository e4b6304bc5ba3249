"""`bgekit serve --store`: the server's /search over a Milvus Lite collection answers what the store does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bgekit import Embedder
from bgekit.cli.serve import add_arguments, build_app

pytest.importorskip("pymilvus")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bgekit.stores import MilvusStore  # noqa: E402


def test_serve_store_searches_the_collection(
    m3: Embedder, scifact_slice: tuple[list[dict], list[str]], tmp_path: Path
) -> None:
    corpus, queries = scifact_slice
    uri = str(tmp_path / "served.db")
    MilvusStore.build(m3, corpus[:100], uri).close()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args(["--store", uri, "--model", m3.folder]))
    try:
        with TestClient(app, base_url="http://localhost") as client:
            response = client.post("/search", json={"query": queries[:3], "top_k": 5, "mode": "hybrid"})
            assert response.status_code == 200, response.text
            body = response.json()
            expected = app.state.index.search(queries[:3], top_k=5, mode="hybrid")
            assert [[h["id"] for h in r["hits"]] for r in body["results"]] == [
                [h.id for h in e] for e in expected
            ]
            assert client.get("/info").json()["index"] == {
                "documents": 100,
                "modes": ["dense", "sparse", "hybrid"],
            }
            assert len(client.post("/embed_sparse", json={"inputs": "what is bge?"}).json()) == 1
    finally:
        app.state.index.close()
