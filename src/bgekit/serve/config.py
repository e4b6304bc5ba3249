"""The server's limits and security settings: one frozen record, validated once, whose defaults are the
CLI's defaults too."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from typing import Any

from bgekit.errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerConfig:
    """How a bgekit server limits and protects itself.

    Attributes:
        max_client_batch_size: most texts (or rerank passages, or search queries) in one request (413).
        max_input_length: most tokens a text may have (default: the model's own limit).
        auto_truncate: cut longer texts to ``max_input_length`` when a request does not say ``truncate``;
            with ``False`` they are refused (413), as TEI without ``--auto-truncate``.
        payload_limit: most bytes in a request body (413).
        max_concurrent_requests: most requests in flight; more are answered 429 with ``Retry-After``.
        max_top_k: largest ``top_k`` / ``top_n`` a request may ask for (422).
        request_timeout: seconds a request may wait for the model before a 503.
        max_batch_tokens: most tokens the worker gathers from many requests into one engine call.
        batch_wait: most seconds the worker holds a group open for requests still being tokenized (it
            never waits when none is on its way, so a lone request starts at once).
        streams: groups of requests the models run at once, the CPU threads split between them (OpenVINO
            streams; ``--backend openvino`` only). 1 gives each group every thread (lowest latency); 2
            serves more small requests per second under load, while a lone request runs on fewer threads.
        api_key: when set, every route but ``/health`` and the schema needs ``Authorization: Bearer KEY``.
        allowed_hosts: ``Host`` header names accepted (``None``: any); a loopback server accepts only
            loopback names, so a web page cannot reach it through DNS rebinding.
        served_model_name: the model name the API reports (never a local path).
        graceful_timeout: seconds a SIGTERM'd server lets requests in flight finish.
        image_root: the only folder whose files a multimodal server's requests may name as images
            (``{"path": ...}``, resolved strictly inside it); ``None`` (default): no server files at all.
        max_image_bytes: most bytes of one request image once base64-decoded (400 beyond it).

    Example:
        >>> ServerConfig(max_client_batch_size=64).max_client_batch_size
        64
    """

    max_client_batch_size: int = 256
    max_input_length: int | None = None
    auto_truncate: bool = True
    payload_limit: int = 2_000_000
    max_concurrent_requests: int = 512
    max_top_k: int = 1000
    request_timeout: float = 60.0
    max_batch_tokens: int = 16384
    batch_wait: float = 0.005
    streams: int = 1
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    served_model_name: str | None = None
    graceful_timeout: float = 30.0
    image_root: str | None = None
    max_image_bytes: int = 20 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_client_batch_size",
            "payload_limit",
            "max_concurrent_requests",
            "max_top_k",
            "max_image_bytes",
            "streams",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= 1")
        if self.max_input_length is not None and self.max_input_length < 1:
            raise ConfigError(f"max_input_length={self.max_input_length} is not valid; expected >= 1")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens={self.max_batch_tokens} is not valid; expected >= 1")
        if not 0 <= self.batch_wait <= 1:
            raise ConfigError(f"batch_wait={self.batch_wait!r} is not valid; expected 0 to 1 second")
        for name in ("request_timeout", "graceful_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid; expected seconds > 0")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("api_key is shorter than 8 characters; use a long random key")
        if self.image_root is not None and not os.path.isdir(self.image_root):
            raise ConfigError(f"image_root={self.image_root!r} is not a folder (--image-root)")

    def __repr__(self) -> str:  # the key never reaches a log
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["api_key"] is not None:
            shown["api_key"] = "***"
        return "ServerConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one field (the CLI's flags take theirs from here)."""
        return next(f.default for f in fields(cls) if f.name == name)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_host_names(host: str) -> tuple[str, ...] | None:
    """The ``Host`` names a server bound to ``host`` accepts: loopback names for a loopback bind, else any."""
    if is_loopback(host):
        return tuple(dict.fromkeys(("localhost", "127.0.0.1", "[::1]", "::1", host)))
    return None
