"""ASGI middleware of the server: metrics, Host check, API key, JSON bodies, payload limit, concurrency.

Each concern is one small pure-ASGI class, so the routes hold no limit, auth or metrics code. Answers
they give are JSON in the server's error shape (``{"error": {...}, "detail": message}``).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """The server's error shape: OpenAI's ``error`` object (which its clients read) plus FastAPI's
    ``detail``.

    Example:
        >>> error_body(413, "too big")["error"]["type"]
        'payload_too_large'
    """
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "code": status},
        "detail": message,
    }


async def send_error(
    send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class MetricsMiddleware:
    """Counts every answer by route and status and times it; routes outside the API count as ``other``."""

    def __init__(self, app: App, metrics: Any, routes: Iterable[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, set(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        started = time.perf_counter()

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(route, status, time.perf_counter() - started)


class HostCheckMiddleware:
    """Answers 421 to a ``Host`` header outside ``allowed`` (with or without a port)."""

    def __init__(self, app: App, allowed: Iterable[str]) -> None:
        self.app, self.allowed = app, {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = (_header(scope, b"host") or "").lower()
            if host.startswith("["):  # [::1]:8000
                name = host[: host.find("]") + 1] if "]" in host else host
            else:  # localhost:8000; a bare IPv6 address has more than one colon
                name = host.split(":")[0] if host.count(":") <= 1 else host
            if name not in self.allowed:
                await send_error(
                    send,
                    421,
                    f"Host header {host!r} is not served here (a loopback server answers localhost)",
                )
                return
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """Needs ``Authorization: Bearer KEY`` (compared in constant time) on every route but ``open_paths``."""

    def __init__(self, app: App, api_key: str, open_paths: Iterable[str]) -> None:
        self.app, self.key, self.open = app, api_key.encode(), set(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open:
            given = _header(scope, b"authorization") or ""
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                await send_error(
                    send,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """POST bodies: JSON only (415), at most ``limit`` bytes (413, before the model sees anything)."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await send_error(
                send, 415, f"content-type {content_type or 'missing'!r}: send a JSON body (application/json)"
            )
            return
        declared = _header(scope, b"content-length")
        too_big = f"request body is larger than the server's payload limit of {self.limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(send, 413, too_big)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await send_error(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ConcurrencyLimitMiddleware:
    """At most ``limit`` model requests (POST) in flight; one more is answered 429 with ``Retry-After``."""

    def __init__(self, app: App, limit: int, retry_after: int = 1) -> None:
        self.app, self.limit, self.retry_after = app, limit, retry_after
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send_error(
                send,
                429,
                f"the server is answering its maximum of {self.limit} concurrent requests; retry later",
                [(b"retry-after", str(self.retry_after).encode())],
            )
            return
        self.in_flight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
