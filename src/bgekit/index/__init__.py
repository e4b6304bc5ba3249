"""Search for RAG: index a corpus once (dense, plus BGE-M3 sparse), search it dense/sparse/hybrid, rerank."""

from bgekit.index.rescore import M3Rescorer
from bgekit.index.search_index import Hit, SearchIndex

__all__ = ["Hit", "M3Rescorer", "SearchIndex"]
