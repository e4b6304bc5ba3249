"""`bgekit serve` as a client meets it: a real server process on 127.0.0.1, called by the `openai` client,
by plain HTTP under load, by schemathesis from its own OpenAPI schema, and stopped with SIGTERM mid-load."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Embedder, Reranker
from tests.builders import build_bert_cross_encoder

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"


@contextmanager
def live_server(tmp_path: Path, *args: str) -> Iterator[LiveServer]:
    """`bgekit serve ARGS` on a free loopback port, ready (health 200) before the test goes on."""
    port = _free_port()
    log = tmp_path / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BGEKIT_API_KEY": KEY}
    command = [sys.executable, "-m", "bgekit.cli.main", "serve", "--port", str(port), *args]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, log)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    return build_bert_cross_encoder(tmp_path_factory.mktemp("live-ce"), minilm_tokenizer_dir)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, minilm_path: str, cross_encoder_dir: str
) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("live"),
        "--model",
        minilm_path,
        "--reranker",
        cross_encoder_dir,
        "--max-concurrent-requests",
        "6",
        "--max-client-batch-size",
        "64",
        "--payload-limit",
        "300000",
        "--max-top-k",
        "50",
        "--request-timeout",
        "600",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def documents(scifact_corpus: list[dict]) -> list[str]:
    return [f"{d['title']} {d['text']}" for d in scifact_corpus[:64]]


def test_the_openai_client_gets_the_library_s_vectors(
    server: LiveServer, minilm_path: str, documents: list[str]
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    texts = ["what is bge?", *documents[:20]]
    expected = Embedder(minilm_path, device="cpu").encode(texts)
    for options in ({}, {"encoding_format": "float"}):  # by default the client asks for base64 and decodes it
        response = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, **options)
        got = np.asarray([d.embedding for d in response.data])
        cosine = (
            np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        )
        assert cosine.min() >= 0.99999
        assert response.usage.prompt_tokens > len(texts)
    single = client.embeddings.create(model="m", input="what is bge?", dimensions=32)
    assert len(single.data[0].embedding) == 32


def test_rerank_equals_compute_score(
    server: LiveServer, cross_encoder_dir: str, documents: list[str]
) -> None:
    reranker = Reranker(cross_encoder_dir, device="cpu")
    query = "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors."
    expected = reranker.compute_score([(query, d) for d in documents[:16]])
    body = httpx.post(
        f"{server.url}/rerank",
        json={"query": query, "texts": documents[:16], "raw_scores": True},
        headers=AUTH,
        timeout=60,
    ).json()
    assert sorted((r["index"], r["score"]) for r in body) == pytest.approx(
        list(enumerate(expected)), abs=1e-5
    )


def test_limits_key_and_host_hold(server: LiveServer) -> None:
    url = server.url
    assert httpx.post(f"{url}/embed", json={"inputs": "x"}).status_code == 401
    evil = httpx.post(f"{url}/embed", json={"inputs": "x"}, headers={**AUTH, "Host": "evil.example"})
    assert evil.status_code == 421
    assert httpx.post(f"{url}/embed", json={"inputs": ["x"] * 65}, headers=AUTH).status_code == 413
    big = httpx.post(f"{url}/embed", json={"inputs": ["word " * 80_000]}, headers=AUTH)
    assert big.status_code == 413 and "payload limit" in big.json()["error"]["message"]
    top = httpx.post(f"{url}/rerank", json={"query": "q", "texts": ["p"], "top_n": 51}, headers=AUTH)
    assert top.status_code == 422
    wrong_type = httpx.post(
        f"{url}/embed", content=b"inputs=x", headers={**AUTH, "content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    info = httpx.get(f"{url}/info", headers=AUTH).json()
    assert "/" not in info["model"]["id"]  # the model's local path is not shown


def test_concurrent_requests_beyond_the_limit_get_429_and_health_stays_up(
    server: LiveServer, documents: list[str]
) -> None:
    def call(i: int) -> Any:
        return httpx.post(
            f"{server.url}/embed", json={"inputs": documents[i % 32 : i % 32 + 8]}, headers=AUTH, timeout=120
        )

    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(call, i) for i in range(24)]
        health = []
        while not all(f.done() for f in futures):
            health.append(httpx.get(f"{server.url}/health", timeout=10).status_code)
            time.sleep(0.05)
        responses = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 6
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
    assert health and set(health) == {200}
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert 'bgekit_requests_total{route="/embed",status="429"}' in metrics
    assert "bgekit_batch_texts_bucket" in metrics and "bgekit_queue_depth" in metrics


def test_schemathesis_finds_no_server_error_or_schema_violation(server: LiveServer, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    command = [
        str(st),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "15",
        "--seed",
        "7",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Traceback" not in server.log.read_text()


def test_m3_sparse_and_multivector_routes_equal_encode(tmp_path: Path, index_m3_dir: str) -> None:
    m3 = Embedder(index_m3_dir, device="cpu")
    texts = ["what is bge m3?", "sparse lexical weights and multi-vector retrieval", "a"]
    expected = m3.encode(texts, return_sparse=True, return_colbert_vecs=True)
    with live_server(tmp_path, "--model", index_m3_dir) as running:
        sparse = httpx.post(f"{running.url}/embed_sparse", json={"inputs": texts}, headers=AUTH).json()
        multi = httpx.post(f"{running.url}/embed_all", json={"inputs": texts}, headers=AUTH).json()
        dense = httpx.post(f"{running.url}/embed", json={"inputs": texts}, headers=AUTH).json()
        info = httpx.get(f"{running.url}/info", headers=AUTH).json()
    assert info["model"]["heads"] == ["dense", "sparse", "colbert"]
    for got, want in zip(sparse, expected["lexical_weights"], strict=True):
        assert {str(v["index"]): v["value"] for v in got} == pytest.approx(want, abs=1e-6)
    for got, want in zip(multi, expected["colbert_vecs"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(dense, expected["dense_vecs"], atol=1e-5)


def test_sigterm_mid_load_loses_no_accepted_request(
    tmp_path: Path, minilm_path: str, documents: list[str]
) -> None:
    expected = Embedder(minilm_path, device="cpu").encode(documents)
    with live_server(tmp_path, "--model", minilm_path) as running:

        def call(i: int) -> Any:
            return httpx.post(
                f"{running.url}/v1/embeddings",
                json={"input": documents[8 * i : 8 * i + 8], "encoding_format": "base64"},
                headers=AUTH,
                timeout=120,
            )

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i) for i in range(8)]
            deadline = time.time() + 30
            while time.time() < deadline:  # all 8 accepted: in flight besides this metrics call
                metrics = httpx.get(f"{running.url}/metrics", headers=AUTH).text
                line = next(x for x in metrics.splitlines() if x.startswith("bgekit_requests_in_flight "))
                if float(line.split()[-1]) >= 9:
                    break
                time.sleep(0.01)
            running.process.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        # uvicorn re-raises the signal once it has shut down cleanly
        assert running.process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Finished server process" in running.log.read_text()
    for i, response in enumerate(responses):
        assert response.status_code == 200
        got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]]
        np.testing.assert_allclose(got, expected[8 * i : 8 * i + 8], atol=1e-5)
