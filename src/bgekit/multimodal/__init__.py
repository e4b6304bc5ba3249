"""Multimodal embedders: texts, images and composed image + text queries in one vector space (BGE-VL).

>>> from bgekit.multimodal import MultimodalEmbedder   # doctest: +SKIP
"""

from __future__ import annotations

from bgekit.multimodal.embedder import MultimodalEmbedder
from bgekit.multimodal.images import ImageInputError
from bgekit.multimodal.settings import MultimodalSettings

__all__ = ["ImageInputError", "MultimodalEmbedder", "MultimodalSettings"]
