"""bgekit: embed, rerank, evaluate, fine-tune and search with BGE and any Hugging Face model.

The public API:

    >>> from bgekit import Embedder, AutoEmbedder   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from bgekit.errors import BgekitError, ConfigError, DataFormatError, InputError, ModelLoadError, WorkerError
from bgekit.inference.auto import AutoEmbedder
from bgekit.inference.embedder import Embedder
from bgekit.models.settings import EmbedderSettings

__version__ = "0.1.0"

__all__ = [
    "AutoEmbedder",
    "BgekitError",
    "ConfigError",
    "DataFormatError",
    "Embedder",
    "EmbedderSettings",
    "InputError",
    "ModelLoadError",
    "WorkerError",
    "__version__",
]

_LAZY = {
    "Reranker": "bgekit.inference.reranker",
    "AutoReranker": "bgekit.inference.reranker",
    "evaluate": "bgekit.evaluation",
}


def __getattr__(name: str) -> Any:
    # later layers (rerankers, evaluation) load on first use so `import bgekit` stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bgekit' has no attribute {name!r}")
