"""The HTTP API in process (FastAPI TestClient) over a real MiniLM index of SciFact and a tiny cross-encoder."""

from __future__ import annotations

import base64
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
from bgekit.serve import ServerConfig, create_app
from tests.builders import build_bert_cross_encoder

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
    with TestClient(create_app(index, reranker=reranker)) as client:
        yield client


def test_health(client: Any) -> None:
    deadline = time.time() + 60
    while client.get("/health").status_code == 503 and time.time() < deadline:
        time.sleep(0.1)
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["index"] == {"documents": 200, "modes": ["dense"]}
    assert info["model"]["dimension"] == 384 and info["model"]["heads"] == ["dense"]
    assert "/" not in info["model"]["id"]  # a local model is named, its path not shown


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
    body = client.post("/embed", json={"inputs": ["what is bge?"], "prompt_name": "query"}).json()
    np.testing.assert_allclose(body, embedder.encode_queries(["what is bge?"]), atol=1e-6)
    passages = ["The giant panda is a bear.", "Paris is in France.", "Pandas eat bamboo."]
    ranking = client.post(
        "/rerank", json={"query": "what is a panda?", "texts": passages, "top_n": 2, "raw_scores": True}
    ).json()
    assert ranking == [{"index": i, "score": s} for i, s in reranker.rank("what is a panda?", passages, 2)]


def test_openai_and_tei_shapes(client: Any, embedder: Embedder) -> None:
    texts = ["what is bge?", "a longer passage about embeddings and retrieval"]
    expected = embedder.encode(texts)
    body = client.post("/v1/embeddings", json={"input": texts, "model": "anything"}).json()
    assert body["object"] == "list" and body["model"] == "anything"
    assert [d["index"] for d in body["data"]] == [0, 1]
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-6)
    tokens = sum(len(embedder.tokenizer(t)["input_ids"]) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    packed = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected[0], atol=1e-6)
    # the float text reads back to exactly the float32 values the base64 form carries (same batch)
    both = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    as_bytes = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in both["data"]]
    assert np.array_equal(np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32), as_bytes)
    # Matryoshka: the first dimensions, normalised again (the model normalises)
    short = client.post("/v1/embeddings", json={"input": texts, "dimensions": 64}).json()
    cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose([d["embedding"] for d in short["data"]], cut, atol=1e-6)
    raw = client.post("/embed", json={"inputs": texts, "normalize": False}).json()
    unit = embedder.encode(texts)
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(np.asarray(raw) / norms[:, None], unit, atol=1e-6)


def test_cohere_rerank(client: Any, reranker: Reranker) -> None:
    documents = ["The giant panda is a bear.", {"text": "Paris is in France."}, "Pandas eat bamboo."]
    body = client.post(
        "/v1/rerank",
        json={"query": "what is a panda?", "documents": documents, "top_n": 3, "return_documents": True},
    ).json()
    texts = [d if isinstance(d, str) else d["text"] for d in documents]
    expected = reranker.rank("what is a panda?", texts, normalize=True)
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == pytest.approx(expected)
    assert body["results"][0]["document"]["text"] == texts[expected[0][0]]


def test_bad_requests_are_named(client: Any, index: SearchIndex) -> None:
    response = client.post("/search", json={"query": "x", "top_k": 0})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "top_k"
    response = client.post("/search", json={"query": "x", "mode": "sparse"})
    assert response.status_code == 400 and "mode='sparse' needs sparse data" in response.json()["detail"]
    assert client.post("/search", json={"top_k": 3}).status_code == 422
    with TestClient(create_app(index)) as no_reranker:
        assert no_reranker.post("/rerank", json={"query": "q", "texts": ["p"]}).status_code == 404
        response = no_reranker.post("/search", json={"query": "q", "rerank": True})
        assert response.status_code == 400 and "no reranker" in response.json()["detail"]
    response = client.post(
        "/embed", content=b'{"inputs": ["fine", "a \\ud800 b"]}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "inputs[1] holds a lone surrogate" in response.json()["detail"]
    response = client.post("/v1/embeddings", json={"input": "x", "dimensions": 999})
    assert response.status_code == 400 and "dimensions=999" in response.json()["error"]["message"]


def test_limits_answer_their_status_codes(index: SearchIndex, reranker: Reranker) -> None:
    config = ServerConfig(
        max_client_batch_size=4, payload_limit=2000, max_top_k=5, auto_truncate=False, max_input_length=16
    )
    with TestClient(create_app(index, reranker=reranker, config=config)) as client:
        response = client.post("/embed", json={"inputs": ["a"] * 5})
        assert response.status_code == 413 and "at most 4 per request" in response.json()["detail"]
        response = client.post("/embed", json={"inputs": "x" * 3000})
        assert response.status_code == 413 and "payload limit of 2000 bytes" in response.json()["detail"]
        response = client.post("/embed", json={"inputs": "many words " * 20})
        assert response.status_code == 413 and "more than the limit of 16" in response.json()["detail"]
        assert client.post("/embed", json={"inputs": "many words " * 20, "truncate": True}).status_code == 200
        assert client.post("/search", json={"query": "x", "top_k": 6}).status_code == 422
        assert client.post("/rerank", json={"query": "q", "texts": ["p"], "top_n": 6}).status_code == 422
        response = client.post("/embed", content=b"inputs=x", headers={"content-type": "text/plain"})
        assert response.status_code == 415
        metrics = client.get("/metrics").text
        assert 'bgekit_requests_total{route="/embed",status="413"} 3.0' in metrics


def test_api_key_and_host_check(index: SearchIndex) -> None:
    config = ServerConfig(api_key="a-long-secret", allowed_hosts=("localhost", "127.0.0.1"))
    with TestClient(create_app(index, config=config), base_url="http://localhost") as client:
        assert client.post("/embed", json={"inputs": "x"}).status_code == 401
        wrong = {"Authorization": "Bearer a-long-secreT"}
        assert client.post("/embed", json={"inputs": "x"}, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer a-long-secret"}
        assert client.post("/embed", json={"inputs": "x"}, headers=right).status_code == 200
        assert client.get("/health").status_code in (200, 503)  # probes need no key
        evil = {**right, "host": "evil.example"}
        assert client.post("/embed", json={"inputs": "x"}, headers=evil).status_code == 421
        assert client.get("/info", headers={**right, "host": "127.0.0.1:8000"}).status_code == 200
    assert "a-long-secret" not in repr(config)


class _SlowScorer:
    """A second stage that takes its time, to let a request time out."""

    def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
        time.sleep(1.0)
        return [0.0] * len(pairs)


def test_a_request_that_waits_too_long_gets_503(embedder: Embedder) -> None:
    config = ServerConfig(request_timeout=0.2)
    with TestClient(create_app(embedder=embedder, reranker=_SlowScorer(), config=config)) as client:
        response = client.post("/rerank", json={"query": "q", "texts": ["p"]})
        assert response.status_code == 503 and "waited more than 0.2 s" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"


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
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
                time.sleep(0.2)
            except httpx.TransportError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the server did not start: {server.stdout.read() if server.stdout else ''}")
                time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/info").json()["index"]["documents"] == 200
        hits = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": "stem cells", "top_k": 2}).json()
        assert [h["id"] for h in hits["results"][0]["hits"]] == [
            h.id for h in index.search("stem cells", top_k=2)
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_rerank_edge_cases(client: Any, reranker: Reranker) -> None:
    one = client.post("/rerank", json={"query": "what is a panda?", "texts": ["A bear."], "raw_scores": True})
    assert one.json() == [{"index": 0, "score": reranker.compute_score([("what is a panda?", "A bear.")])[0]}]
    assert client.post("/rerank", json={"query": "q", "texts": []}).json() == []
