"""Serving throughput and latency: `bgekit serve` against infinity-emb and against the library itself.

One run, loopback only, bounded by request counts. For each server (bgekit, and infinity-emb installed by
this script into its own virtual environment under .bench/, torch engine, same local model, fp32, same
threads) and each concurrency level (1, 4, 16, 64), clients send OpenAI-shaped embedding requests of SciFact
queries (4 per request) or documents (32 per request) and the script prints texts/s, p50/p99 latency, the
ratio to the library encoding the same texts in one call, and the ratio to infinity. The library runs in a
process of its own and every process stays up through the run: at each level the library's one call and
each server's load run back to back, so a ratio is never read across minutes of the machine's drift. Query
levels run three such rounds and print medians (the range of the ratio to the library beside it). During
the highest level a separate process polls /health every 50 ms, as a real health check does; its p99 is
printed. Each level starts with an untimed warm-up (two query requests per client, or up to four document
requests: connections, the model's first shapes), then times at least 32 query requests per client (at
least 256 in all) or the document requests. Peak resident memory of each server process is read from
/proc. Quality beside each figure: the minimum cosine between the vectors a server returned and the
library's.

Example:
    python benchmarks/serve.py                      # bgekit and infinity, both workloads
    python benchmarks/serve.py --peers none --levels 1 16
    python benchmarks/serve.py --backend openvino   # bgekit (and the library) on OpenVINO fp32
    python benchmarks/serve.py --backend openvino --streams 2   # two groups at once, a thread each
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, default_model_path, ensure_venv, load_scifact, print_table  # noqa: E402

INFINITY_PINS = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78"]
WORKLOADS = {"queries": 4, "documents": 32}
"""Texts per request."""
ROUNDS = {"queries": 3, "documents": 1}
"""Timed rounds per level, medians printed: a query load lasts seconds, and a few seconds of the machine's
speed vary by more than the differences measured; a document load lasts tens of seconds."""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set(next(x for x in text.splitlines() if x.startswith("flags")).split(":", 1)[1].split())
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return " ".join(f for f in wanted if f in flags)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_infinity() -> Path:
    """infinity-emb in its own virtual environment (its pins clash with ours: numpy<2, ST<4)."""
    return ensure_venv("infinity", INFINITY_PINS, "infinity_emb").parent / "infinity_emb"


class Server:
    """A server process on a free loopback port, its embeddings URL and its peak memory."""

    def __init__(self, name: str, command: list[str], port: int, route: str, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.route = self.url + route
        self.log = open(REPO / ".bench" / f"{name}-{port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s; see {self.log.name}")

    def peak_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def start_bgekit(model: str, threads: int, backend: str, streams: int) -> Server:
    port = free_port()
    env = server_env(threads)
    command = [sys.executable, "-m", "bgekit.cli.main", "serve", "--model", model, "--port", str(port)]
    command += ["--max-concurrent-requests", "1024", "--request-timeout", "600"]
    command += ["--backend", backend, "--dtype", "fp32", "--streams", str(streams)]
    return Server("bgekit", command, port, "/v1/embeddings", env)


def start_infinity(model: str, threads: int, batch_size: int) -> Server:
    binary = ensure_infinity()
    port = free_port()
    env = {**server_env(threads), "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    command = [str(binary), "v2", "--model-id", model, "--engine", "torch", "--device", "cpu"]
    command += ["--dtype", "float32", "--batch-size", str(batch_size), "--port", str(port)]
    command += ["--no-bettertransformer"]
    return Server("infinity", command, port, "/embeddings", env)


def server_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


class HealthProbe:
    """Polls ``/health`` every 50 ms from a separate process until ``stop``; its latencies in ms."""

    CODE = (
        "import sys, time, json, select, httpx\n"
        "url, out = sys.argv[1], []\n"
        "with httpx.Client(timeout=30) as http:\n"
        "    while not select.select([sys.stdin], [], [], 0.05)[0]:\n"
        "        started = time.perf_counter(); http.get(url + '/health')\n"
        "        out.append(1000 * (time.perf_counter() - started))\n"
        "print(json.dumps(out))\n"
    )

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.CODE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> list[float]:
        out, _ = self.process.communicate("stop\n", timeout=60)
        return [float(x) for x in json.loads(out)]


def load(server: Server, batches: list[list[str]], concurrency: int, poll_health: bool) -> dict[str, Any]:
    """Send every batch once with ``concurrency`` clients; texts/s, latencies (s), first vectors, /health ms.

    Each client is one kept-alive connection of the standard library's ``http.client``: the clients share
    the cores with the server, and it costs about a third of httpx's CPU time per request (0.41 against
    1.16 ms on the Xeon of docs/serve.md).
    """
    latencies: list[float] = []
    vectors: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    path = server.route.removeprefix(server.url)
    headers = {"Content-Type": "application/json"}

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        try:
            for i in range(worker, len(batches), concurrency):
                body = json.dumps({"input": batches[i], "model": "m"})
                started = time.perf_counter()
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"{server.name}: {response.status} {payload[:300]!r}")
                if i < 4:
                    data = sorted(json.loads(payload)["data"], key=lambda d: d["index"])
                    with lock:
                        vectors[i] = np.asarray([d["embedding"] for d in data], dtype=np.float32)
                with lock:
                    latencies.append(elapsed)
        finally:
            connection.close()

    # the probe runs in a process of its own, as a real health check does: in this process it would wait
    # for the GIL behind the load's own client threads and measure them rather than the server
    probe = HealthProbe(server.url) if poll_health else None
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client, w) for w in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - started
    health_ms = probe.stop() if probe is not None else []
    texts = sum(len(b) for b in batches)
    return {
        "texts_per_s": texts / wall,
        "latencies": latencies,
        "vectors": vectors,
        "health_ms": health_ms,
    }


class Library:
    """The library in a process of its own (same threads and backend as the server, fp32), kept alive
    through the run so each level's one-call timing is taken right before the servers' loads of the
    same texts: the machine's speed drifts over minutes, and back-to-back timings compare like with like."""

    def __init__(self, model: str, threads: int, backend: str) -> None:
        code = (
            "import sys, time, json, numpy as np, torch\n"
            f"torch.set_num_threads({threads})\n"
            "from bgekit import Embedder\n"
            f"model = Embedder({model!r}, device='cpu', backend={backend!r}, dtype='fp32', show_progress=False)\n"
            "print('ready', flush=True)\n"
            "for line in sys.stdin:\n"
            "    path = line.strip(); texts = json.load(open(path))\n"
            "    model.encode(texts[:64])\n"
            "    started = time.perf_counter(); vectors = model.encode(texts)\n"
            "    wall = time.perf_counter() - started\n"
            "    np.save(path + '.npy', vectors); print(len(texts) / wall, flush=True)\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=server_env(threads),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, what: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line or (what and line != what):
            raise RuntimeError(f"the library process answered {line!r} (exit code {self.process.poll()})")
        return line

    def rate(self, texts: list[str]) -> tuple[float, np.ndarray]:
        """Texts/s of one ``encode`` call over ``texts`` (after a short warm-up), and the vectors."""
        path = REPO / ".bench" / "library-texts.json"
        path.write_text(json.dumps(texts))
        assert self.process.stdin is not None
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        rate = float(self._expect(""))
        return rate, np.load(f"{path}.npy")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def min_cosine(
    got: dict[int, np.ndarray], batches: list[list[str]], reference: dict[str, np.ndarray]
) -> float:
    worst = 1.0
    for i, vectors in got.items():
        want = np.stack([reference[t] for t in batches[i]])
        cos = np.sum(vectors * want, axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
        worst = min(worst, float(cos.min()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a local embedder folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--peers", nargs="*", default=["infinity"], help="infinity, or none")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--infinity-batch-size", type=int, default=32, help="infinity's default")
    parser.add_argument("--requests", type=int, default=16, help="document requests per level (at least)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="timed rounds per level (default: 3 for queries, 1 for documents)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "openvino"],
        default="torch",
        help="what runs bgekit's model, fp32 in every case (the library baseline uses the same)",
    )
    parser.add_argument(
        "--streams", type=int, default=1, help="bgekit serve --streams (with --backend openvino)"
    )
    args = parser.parse_args()
    model = args.model or default_model_path()
    (REPO / ".bench").mkdir(exist_ok=True)
    corpus, queries, _ = load_scifact()
    pools = {
        "queries": [q["text"] for q in queries],
        "documents": [f"{d['title']} {d['text']}".strip() for d in corpus],
    }
    plans: dict[str, dict[int, list[list[str]]]] = {}
    for workload in args.workloads:
        size, pool = WORKLOADS[workload], pools[workload]
        plans[workload] = {}
        for level in args.levels:
            count = max(level, args.requests) if workload == "documents" else max(32 * level, 256)
            plans[workload][level] = [
                [pool[(r * size + j) % len(pool)] for j in range(size)] for r in range(count)
            ]
    every_text = sorted({t for w in plans.values() for b in w.values() for batch in b for t in batch})
    print(
        f"# {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores visible, {args.threads} threads per server"
    )
    print(
        f"# model {Path(model).name}, fp32 (bgekit on {args.backend}, {args.streams} stream(s), infinity on torch); "
        f"{len(every_text)} distinct SciFact texts; loopback only"
    )
    starters = {"bgekit": lambda: start_bgekit(model, args.threads, args.backend, args.streams)}
    if "infinity" in args.peers:
        starters["infinity"] = lambda: start_infinity(model, args.threads, args.infinity_batch_size)
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    reference: dict[str, np.ndarray] = {}
    servers: dict[str, Server] = {}
    library = None
    try:
        # every process stays up through the run, idle but for its own turn: in each round of a level the
        # library's one call and each server's load run back to back
        library = Library(model, args.threads, args.backend)
        for name, start in starters.items():
            servers[name] = start()
        for server in servers.values():
            server.wait_ready()
        for workload in args.workloads:
            rounds = args.rounds or ROUNDS[workload]
            for level in args.levels:
                texts = sorted({t for batch in plans[workload][level] for t in batch})
                for number in range(rounds):
                    print(f"{workload} at concurrency {level}, round {number + 1} of {rounds}: ", end="")
                    print(f"library ({len(texts)} texts in one call)", end="", flush=True)
                    rate, vectors = library.rate(texts)
                    print(f" {rate:.1f}", end="", flush=True)
                    rates.setdefault((workload, level), []).append(rate)
                    reference.update(zip(texts, vectors, strict=True))
                    for name, server in servers.items():
                        print(f", {name}", end="", flush=True)
                        warm = 2 * level if workload == "queries" else min(level, 4)
                        load(server, plans[workload][level][:warm], level, False)  # warm-up, untimed
                        run = load(server, plans[workload][level], level, level == max(args.levels))
                        results.setdefault((name, workload, level), []).append(run)
                        print(f" {run['texts_per_s']:.1f}", end="", flush=True)
                    print(flush=True)
        peaks = {name: server.peak_mb() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        if library is not None:
            library.stop()

    for workload in args.workloads:
        library_rates = ", ".join(
            f"{statistics.median(rates[(workload, level)]):.1f}" for level in args.levels
        )
        rounds = len(rates[(workload, args.levels[0])])
        print(
            f"\n## {workload}: {WORKLOADS[workload]} texts per request; library {library_rates} texts/s "
            f"(one call right before each round's loads); {rounds} round(s) per level, medians"
        )
        rows = []
        for level in args.levels:
            for name in starters:
                runs = results[(name, workload, level)]
                vs_library = [
                    r["texts_per_s"] / x for r, x in zip(runs, rates[(workload, level)], strict=True)
                ]
                vs_infinity = ""
                if name == "bgekit" and ("infinity", workload, level) in results:
                    peers = results[("infinity", workload, level)]
                    ratios = [r["texts_per_s"] / p["texts_per_s"] for r, p in zip(runs, peers, strict=True)]
                    vs_infinity = f"{statistics.median(ratios):.2f}x"
                latencies = [x for r in runs for x in r["latencies"]]
                health = [x for r in runs for x in r["health_ms"]]
                worst = min(min_cosine(r["vectors"], plans[workload][level], reference) for r in runs)
                rows.append(
                    [
                        level,
                        name,
                        f"{statistics.median(r['texts_per_s'] for r in runs):.1f}",
                        f"{statistics.median(vs_library):.2f}"
                        + (f" ({min(vs_library):.2f}-{max(vs_library):.2f})" if rounds > 1 else ""),
                        vs_infinity,
                        f"{1000 * statistics.median(latencies):.0f}",
                        f"{1000 * float(np.percentile(latencies, 99)):.0f}",
                        f"{np.percentile(health, 99):.0f}" if health else "",
                        f"{worst:.6f}",
                    ]
                )
        print_table(
            [
                "concurrency",
                "server",
                "texts/s",
                "vs library",
                "vs infinity",
                "p50 ms",
                "p99 ms",
                "/health p99 ms",
                "min cosine",
            ],
            rows,
        )
    print("\npeak resident memory: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
