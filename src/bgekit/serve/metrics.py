"""Prometheus metrics of a server (prometheus-client), one registry per app, served at ``GET /metrics``."""

from __future__ import annotations

from bgekit.optional import require_prometheus
from bgekit.serve.worker import WorkerStats

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class ServerMetrics(WorkerStats):
    """Histograms of request, queue, tokenization and inference time, batch sizes in texts and tokens,
    counts by route and status, groups shared between model threads, queue depth and requests in flight.

    Example:
        >>> metrics = ServerMetrics()
        >>> metrics.observe_request("/embed", 200, 0.01)
        >>> b"bgekit_requests_total" in metrics.render()[0]
        True
    """

    def __init__(self) -> None:
        prom = require_prometheus()
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "bgekit_requests", "Requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.request_seconds = prom.Histogram(
            "bgekit_request_duration_seconds",
            "Time to answer a request.",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = prom.Histogram(
            "bgekit_queue_duration_seconds",
            "Time a request's texts waited for the model.",
            buckets=_SECONDS,
            registry=r,
        )
        self.tokenize_seconds = prom.Histogram(
            "bgekit_tokenization_duration_seconds",
            "Time to tokenize a request.",
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = prom.Histogram(
            "bgekit_inference_duration_seconds",
            "Time of one model call over a group of requests.",
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_texts = prom.Histogram(
            "bgekit_batch_texts", "Texts in one model call.", buckets=_TEXTS, registry=r
        )
        self.batch_tokens = prom.Histogram(
            "bgekit_batch_tokens", "Tokens in one model call.", buckets=_TOKENS, registry=r
        )
        self.shared_groups = prom.Counter(
            "bgekit_shared_groups",
            "Groups split between model threads that were idle (--streams > 1).",
            registry=r,
        )
        self.queue_depth = prom.Gauge("bgekit_queue_depth", "Jobs waiting for the model.", registry=r)
        self.in_flight = prom.Gauge("bgekit_requests_in_flight", "Requests being answered.", registry=r)
        self._content_type = prom.CONTENT_TYPE_LATEST
        self._generate = prom.generate_latest

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def queued(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def ran(self, texts: int, tokens: int, queue_seconds: list[float], run_seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(run_seconds)
        for seconds in queue_seconds:
            self.queue_seconds.observe(seconds)

    def shared(self, parts: int) -> None:
        self.shared_groups.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._generate(self.registry), self._content_type
