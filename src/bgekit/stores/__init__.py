"""Vector databases as the home of a corpus too large for one process: write encoded documents, search them.

``MilvusStore`` (extra ``[milvus]``) keeps dense vectors and BGE-M3 lexical weights in one Milvus collection
and searches them dense, sparse or hybrid with the same call and results as ``bgekit.index.SearchIndex``.
Importing this package needs no extra; opening a store names the one to install.
"""

from bgekit.stores.milvus import MilvusStore

__all__ = ["MilvusStore"]
