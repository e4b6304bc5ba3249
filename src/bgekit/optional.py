"""Optional dependencies, imported where they are used, with an error that says what to install."""

from __future__ import annotations

from typing import Any

from bgekit.errors import ConfigError


def require_faiss(purpose: str = "dense search") -> Any:
    """The ``faiss`` module, or a ConfigError naming ``purpose`` and the package to install.

    Example:
        >>> require_faiss().IndexFlatIP(4).d
        4
    """
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is in the dev set CI installs
        raise ConfigError(
            f"{purpose} needs faiss: pip install faiss-cpu (in bgekit's eval, search, serve and train extras)"
        ) from exc
    return faiss


def require_ray(purpose: str = "encoding on a Ray cluster") -> Any:
    """The ``ray`` module (with Ray Data and pyarrow), or a ConfigError naming ``purpose`` and the extra.

    Example:
        >>> require_ray().data.ActorPoolStrategy.__name__   # doctest: +SKIP
        'ActorPoolStrategy'
    """
    try:
        import pyarrow  # noqa: F401 - Ray Data's block format, installed by ray[data]
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"{purpose} needs Ray Data: pip install 'bgekit[ray]'") from exc
    return ray


def require_pymilvus(purpose: str = "a Milvus store") -> Any:
    """The ``pymilvus`` module, or a ConfigError naming ``purpose`` and the extra to install.

    Example:
        >>> require_pymilvus().DataType.SPARSE_FLOAT_VECTOR.name   # doctest: +SKIP
        'SPARSE_FLOAT_VECTOR'
    """
    try:
        import pymilvus
    except ImportError as exc:
        raise ConfigError(
            f"{purpose} needs pymilvus (and milvus-lite for a local .db file): pip install 'bgekit[milvus]'"
        ) from exc
    return pymilvus


def require_fastapi(purpose: str = "serving") -> Any:
    """The ``fastapi`` module (with orjson, which writes the responses), or a ConfigError naming the extra.

    Example:
        >>> require_fastapi().FastAPI.__name__   # doctest: +SKIP
        'FastAPI'
    """
    try:
        import fastapi
        import orjson  # noqa: F401 - the server's JSON responses
    except ImportError as exc:
        raise ConfigError(
            f"{purpose} needs FastAPI, uvicorn and orjson: pip install 'bgekit[serve]'"
        ) from exc
    return fastapi


def require_prometheus(purpose: str = "serving") -> Any:
    """The ``prometheus_client`` module, or a ConfigError naming ``purpose`` and the extra to install.

    Example:
        >>> require_prometheus().Counter.__name__   # doctest: +SKIP
        'Counter'
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(f"{purpose} needs prometheus-client: pip install 'bgekit[serve]'") from exc
    return prometheus_client
