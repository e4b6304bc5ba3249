"""A bounded soak of `bgekit serve`: mixed routes, 5% malformed or oversized requests, memory watched.

The script builds an index of SciFact documents with all-MiniLM-L6-v2 and a small cross-encoder, starts
`bgekit serve --index ... --reranker ...` on 127.0.0.1, and for ``--minutes`` sends requests from
``--clients`` threads: OpenAI and TEI embeddings, TEI and Cohere rerank, search, /info, and 5% bad ones
(broken JSON, wrong types, too many texts, bodies past the payload limit, wrong content type). Every valid
answer is checked against the library (embeddings: cosine >= 0.99999; rerank scores: 1e-4; search: the
same ids as ``SearchIndex.search``); every bad one must be a 4xx. Resident memory is sampled every 5 s;
the script fails if any 5xx appeared, any answer was wrong, or memory rose more than 10% above where it
settled after the warm-up (the first fifth of the run): the highest sample of the minute after it, since a
sample taken mid-forward holds a batch's activations and one taken between passes does not.

Example:
    python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # after benchmarks/: the tests package
from _common import REPO, default_model_path, load_scifact  # noqa: E402

from serve import cpu_flags, cpu_name, free_port, server_env  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--documents", type=int, default=1000, help="SciFact documents in the index")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE for the server process")
    args = parser.parse_args()

    import httpx
    from tests.builders import build_bert_cross_encoder

    from bgekit import Embedder, Reranker
    from bgekit.index import SearchIndex

    work = REPO / ".bench" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    model = default_model_path()
    corpus, queries, _ = load_scifact()
    embedder = Embedder(model, device="cpu")
    index_dir = work / f"index-{args.documents}"
    if not index_dir.exists():
        print(f"indexing {args.documents} SciFact documents ...", flush=True)
        SearchIndex.build(embedder, corpus[: args.documents]).save(str(index_dir))
    index = SearchIndex.load(str(index_dir))
    tokenizer_dir = work / "tokenizer"
    if not tokenizer_dir.exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(model).save_pretrained(tokenizer_dir)
    reranker_dir = work / "cross-encoder"
    if not reranker_dir.exists():
        reranker_dir.mkdir()
        build_bert_cross_encoder(reranker_dir, str(tokenizer_dir))
    reranker = Reranker(str(reranker_dir), device="cpu")

    # what every valid answer must equal
    texts = [q["text"] for q in queries[:60]] + [f"{d['title']} {d['text']}" for d in corpus[:60]]
    reference = dict(zip(texts, embedder.encode(texts), strict=True))
    search_queries = [q["text"] for q in queries[60:100]]
    expected_hits = {
        q: [h.id for h in hits]
        for q, hits in zip(search_queries, index.search(search_queries, 5), strict=True)
    }
    pair_query = queries[0]["text"]
    pair_texts = [f"{d['title']} {d['text']}" for d in corpus[:40]]
    pair_scores = dict(
        zip(pair_texts, reranker.compute_score([(pair_query, t) for t in pair_texts]), strict=True)
    )

    port = free_port()
    command = [sys.executable, "-m", "bgekit.cli.main", "serve", "--index", str(index_dir)]
    command += ["--reranker", str(reranker_dir), "--port", str(port), "--max-client-batch-size", "64"]
    command += ["--payload-limit", "200000"]
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    env = {**server_env(args.threads), **dict(item.split("=", 1) for item in args.server_env)}
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start; see {log.name}")
        time.sleep(0.5)

    counts: dict[str, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    memory: list[tuple[float, float]] = []
    started = time.time()

    def note(what: str, problem: str | None = None) -> None:
        with lock:
            counts[what] = counts.get(what, 0) + 1
            if problem is not None and len(failures) < 50:
                failures.append(f"{what}: {problem}")

    def check_vectors(got: Any, batch: list[str]) -> str | None:
        got = np.asarray(got, dtype=np.float32)
        want = np.stack([reference[t] for t in batch])
        cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        return None if cosine.min() >= 0.99999 else f"min cosine {cosine.min():.6f}"

    def one_request(http: Any, rng: random.Random) -> None:
        if rng.random() < 0.05:
            kind = rng.choice(["broken-json", "wrong-type", "too-many", "too-big", "content-type"])
            if kind == "broken-json":
                r = http.post(
                    url + "/embed", content=b'{"inputs": [', headers={"content-type": "application/json"}
                )
            elif kind == "wrong-type":
                r = http.post(url + "/v1/embeddings", json={"input": [1, {"a": 2}]})
            elif kind == "too-many":
                r = http.post(url + "/embed", json={"inputs": ["x"] * 65})
            elif kind == "too-big":
                r = http.post(url + "/embed", json={"inputs": ["word " * 50_000]})
            else:
                r = http.post(url + "/rerank", content=b"query=x", headers={"content-type": "text/plain"})
            note(f"bad:{kind}", None if 400 <= r.status_code < 500 else f"status {r.status_code}")
            return
        route = rng.choice(["openai", "tei", "rerank", "cohere", "search", "info"])
        if route in ("openai", "tei"):
            batch = rng.sample(texts, rng.choice([1, 4, 16]))
            if route == "openai":
                r = http.post(url + "/v1/embeddings", json={"input": batch})
                got = [d["embedding"] for d in r.json()["data"]] if r.status_code == 200 else None
            else:
                r = http.post(url + "/embed", json={"inputs": batch})
                got = r.json() if r.status_code == 200 else None
            note(route, f"status {r.status_code}" if got is None else check_vectors(got, batch))
        elif route in ("rerank", "cohere"):
            batch = rng.sample(pair_texts, 8)
            if route == "rerank":
                r = http.post(url + "/rerank", json={"query": pair_query, "texts": batch, "raw_scores": True})
                pairs = [(batch[x["index"]], x["score"]) for x in r.json()] if r.status_code == 200 else None
            else:
                r = http.post(url + "/v1/rerank", json={"query": pair_query, "documents": batch})
                pairs = None
                if r.status_code == 200:  # Cohere's relevance is the sigmoid of the logit
                    pairs = [
                        (batch[x["index"]], float(np.log(x["relevance_score"] / (1 - x["relevance_score"]))))
                        for x in r.json()["results"]
                        if 0 < x["relevance_score"] < 1
                    ]
            if pairs is None:
                note(route, f"status {r.status_code}")
            else:
                worst = max((abs(score - pair_scores[text]) for text, score in pairs), default=0.0)
                note(route, None if worst < 1e-3 else f"score off by {worst:.2e}")
        elif route == "search":
            query = rng.choice(search_queries)
            r = http.post(url + "/search", json={"query": query, "top_k": 5, "rerank": False})
            ok = (
                r.status_code == 200
                and [h["id"] for h in r.json()["results"][0]["hits"]] == expected_hits[query]
            )
            note(route, None if ok else f"status {r.status_code} or other hits")
        else:
            r = http.get(url + "/info")
            note(route, None if r.status_code == 200 else f"status {r.status_code}")

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    one_request(http, rng)
                except Exception as exc:  # a transport error or unparsable answer is a failure too
                    note("client-error", repr(exc)[:200])

    def sample_memory() -> None:
        while not stop.is_set():
            memory.append((time.time() - started, rss_mb(server.pid)))
            stop.wait(5)

    threads = [threading.Thread(target=client, args=(args.seed + i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=sample_memory))
    print(
        f"# {cpu_name()} ({cpu_flags()}); soak {args.minutes:g} min, {args.clients} clients, loopback",
        flush=True,
    )
    for t in threads:
        t.start()
    time.sleep(args.minutes * 60)
    stop.set()
    for t in threads:
        t.join()
    metrics = httpx.get(url + "/metrics").text
    server.terminate()
    server.wait(60)
    log.close()

    five_xx = [  # /health answers 503 while the model warms up, by design
        line
        for line in metrics.splitlines()
        if line.startswith("bgekit_requests_total") and 'status="5' in line and 'route="/health"' not in line
    ]
    # a sample taken during a forward pass holds that batch's activations (up to ~200 MiB here), one taken
    # between passes does not: "settled" is the highest sample of the minute after the warm-up (the level
    # the server works at, activations included), and a leak is any later sample 10% above it
    warm_end = args.minutes * 60 / 5
    first_minute = [m for t, m in memory if warm_end <= t < warm_end + 60]
    later = [m for t, m in memory if t >= warm_end + 60] or first_minute
    settled = max(first_minute) if first_minute else float("nan")
    highest = max(later) if later else float("nan")
    total = sum(counts.values())
    print(json.dumps(counts, sort_keys=True))
    print(
        f"requests {total} ({total / (args.minutes * 60):.1f}/s); failures {len(failures)}; 5xx lines {len(five_xx)}"
    )
    print(
        f"resident memory: settled {settled:,.0f} MiB (highest sample of the minute after warm-up), "
        f"highest later {highest:,.0f} MiB ({highest / settled - 1:+.1%}); first sample {memory[0][1]:,.0f} MiB"
    )
    minute_marks = [m for t, m in memory if int(t) % 60 < 5]  # one sample a minute
    print("resident memory by minute (MiB): " + " ".join(f"{m:,.0f}" for m in minute_marks))
    # each minute's lowest sample is the floor between passes, its highest the working level
    by_minute: dict[int, list[float]] = {}
    for t, m in memory:
        by_minute.setdefault(int(t // 60), []).append(m)
    print(
        "lowest / highest sample each minute (MiB): "
        + " ".join(f"{min(v):,.0f}/{max(v):,.0f}" for _, v in sorted(by_minute.items()))
    )
    for failure in failures[:20]:
        print("FAIL", failure)
    ok = not failures and not five_xx and highest <= 1.10 * settled
    print("soak passed" if ok else "soak FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
