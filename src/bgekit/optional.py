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
