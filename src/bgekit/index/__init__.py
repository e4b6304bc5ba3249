"""Search for RAG: index a corpus once (dense, plus BGE-M3 sparse), search it dense/sparse/hybrid, rerank."""

from bgekit.index.search_index import Hit, SearchIndex

__all__ = ["Hit", "SearchIndex"]
