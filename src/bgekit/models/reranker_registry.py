"""The table of published rerankers: settings to use when a model folder does not say them itself.

A fallback only, like ``models/registry.py`` for embedders: a folder's ``bgekit.json`` (``reranker``
section) wins over it, and explicit arguments win over everything. Entries follow the model cards and
FlagEmbedding's defaults for each checkpoint.
"""

from __future__ import annotations

from typing import Any

LLM_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
"""FlagEmbedding's default prompt of ``bge-reranker-v2-gemma`` and ``bge-reranker-v2-minicpm-layerwise``."""

LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
"""FlagEmbedding's default prompt of ``bge-reranker-v2.5-gemma2-lightweight``."""

_TABLE: dict[str, dict[str, Any]] = {}


def _add(names: list[str], **settings: Any) -> None:
    for name in names:
        _TABLE[name.lower()] = dict(settings)


_add(
    ["BAAI/bge-reranker-base", "BAAI/bge-reranker-large", "BAAI/bge-reranker-v2-m3"],
    kind="cross-encoder",
    max_length=512,
)
_add(["BAAI/bge-reranker-v2-gemma"], kind="llm", prompt=LLM_PROMPT, max_length=512, dtype="bf16")
_add(
    ["BAAI/bge-reranker-v2-minicpm-layerwise"],
    kind="layerwise",
    prompt=LLM_PROMPT,
    max_length=512,
    cutoff_layers=[28],
    dtype="bf16",
)
_add(
    ["BAAI/bge-reranker-v2.5-gemma2-lightweight"],
    kind="lightweight",
    prompt=LIGHTWEIGHT_PROMPT,
    max_length=512,
    cutoff_layers=[28],
    compress_layers=[24, 40],
    compress_ratio=2,
    dtype="bf16",
)


def lookup(name: str) -> dict[str, Any]:
    """Published settings for a reranker's hub name (or a folder named like one), else ``{}``.

    A local folder whose last path component is a published name (``.../bge-reranker-v2-gemma``) matches
    too, as FlagEmbedding's ``FlagAutoReranker`` matches by folder name.

    Example:
        >>> lookup("BAAI/bge-reranker-v2-gemma")["kind"]
        'llm'
    """
    key = name.strip().rstrip("/").lower()
    if key in _TABLE:
        return dict(_TABLE[key])
    base = key.replace("\\", "/").rsplit("/", 1)[-1]
    for known, settings in _TABLE.items():
        if known.rsplit("/", 1)[-1] == base:
            return dict(settings)
    return {}


def known_names() -> list[str]:
    """All reranker hub names the table knows (lower-cased)."""
    return sorted(_TABLE)
