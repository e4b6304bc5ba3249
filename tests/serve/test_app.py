"""The HTTP API over a real MiniLM index of SciFact and a tiny cross-encoder; `bgekit serve` end to end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Embedder, Reranker
from bgekit.index import SearchIndex
from bgekit.serve import create_app
from inference.reranker_fixtures import build_bert_cross_encoder  # tests/ is on sys.path

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def corpus(scifact_corpus: list[dict]) -> list[dict]:
    return scifact_corpus[:200]


@pytest.fixture(scope="module")
def embedder(minilm_path: str) -> Embedder:
    return Embedder(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def index(embedder: Embedder, corpus: list[dict]) -> SearchIndex:
    return SearchIndex.build(embedder, corpus)


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> Reranker:
    return Reranker(build_bert_cross_encoder(tmp_path_factory.mktemp("serve-ce"), minilm_tokenizer_dir))


@pytest.fixture(scope="module")
def client(index: SearchIndex, reranker: Reranker) -> Any:
    return TestClient(create_app(index, reranker=reranker))


def test_health(client: Any) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["documents"] == 200 and body["modes"] == ["dense"]


def test_search_returns_what_the_index_returns(client: Any, index: SearchIndex, reranker: Reranker) -> None:
    query = "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors."
    body = client.post("/search", json={"query": query, "top_k": 3, "rerank": False}).json()
    assert body["results"][0]["query"] == query
    assert body["results"][0]["hits"] == [h.to_dict() for h in index.search(query, top_k=3)]
    reranked = client.post(
        "/search", json={"query": [query, "stem cells"], "top_k": 2, "rerank_top_k": 10}
    ).json()
    expected = index.search([query, "stem cells"], top_k=2, reranker=reranker, rerank_top_k=10)
    assert [[h["id"] for h in r["hits"]] for r in reranked["results"]] == [
        [h.id for h in e] for e in expected
    ]
    assert reranked["results"][0]["hits"][0]["retrieval_score"] is not None


def test_embed_and_rerank(client: Any, embedder: Embedder, reranker: Reranker) -> None:
    body = client.post("/embed", json={"texts": ["what is bge?"], "kind": "query"}).json()
    np.testing.assert_allclose(body["embeddings"], embedder.encode_queries(["what is bge?"]), atol=1e-6)
    passages = ["The giant panda is a bear.", "Paris is in France.", "Pandas eat bamboo."]
    ranking = client.post(
        "/rerank", json={"query": "what is a panda?", "passages": passages, "top_k": 2}
    ).json()
    assert ranking["ranking"] == [
        {"index": i, "score": s} for i, s in reranker.rank("what is a panda?", passages, 2)
    ]


def test_bad_requests_are_named(client: Any, index: SearchIndex) -> None:
    response = client.post("/search", json={"query": "x", "top_k": 0})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "top_k"
    response = client.post("/search", json={"query": "x", "mode": "sparse"})
    assert response.status_code == 400 and "mode='sparse' needs sparse data" in response.json()["detail"]
    assert client.post("/search", json={"top_k": 3}).status_code == 422
    no_reranker = TestClient(create_app(index))
    response = no_reranker.post("/rerank", json={"query": "q", "passages": ["p"]})
    assert response.status_code == 400 and "no reranker" in response.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_bgekit_serve_answers_on_localhost(index: SearchIndex, tmp_path: Path) -> None:
    import httpx

    index.save(str(tmp_path / "idx"))
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "bgekit.cli.main",
        "serve",
        "--index",
        str(tmp_path / "idx"),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the server did not start: {server.stdout.read() if server.stdout else ''}")
                time.sleep(0.5)
        assert health["documents"] == 200
        hits = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": "stem cells", "top_k": 2}).json()
        assert [h["id"] for h in hits["results"][0]["hits"]] == [
            h.id for h in index.search("stem cells", top_k=2)
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_rerank_edge_cases(client: Any, reranker: Reranker) -> None:
    one = client.post("/rerank", json={"query": "what is a panda?", "passages": ["A bear."]}).json()
    assert one["ranking"] == [
        {"index": 0, "score": reranker.compute_score([("what is a panda?", "A bear.")])[0]}
    ]
    assert client.post("/rerank", json={"query": "q", "passages": []}).json() == {"ranking": []}
