"""``AutoEmbedder``: pick the right embedder for a checkpoint from its settings."""

from __future__ import annotations

from typing import Any

from bgekit.inference.embedder import Embedder


class AutoEmbedder:
    """Factory mirroring transformers' ``Auto*`` classes.

    Example:
        >>> AutoEmbedder.from_pretrained("BAAI/bge-small-en-v1.5")   # doctest: +SKIP
    """

    def __init__(self) -> None:
        raise TypeError("use AutoEmbedder.from_pretrained(name_or_path, ...)")

    @classmethod
    def from_pretrained(cls, model_name_or_path: str, **kwargs: Any) -> Embedder:
        """Load an embedder; the kind (encoder, M3, decoder, ICL) comes from the model's settings."""
        return Embedder(model_name_or_path, **kwargs)
