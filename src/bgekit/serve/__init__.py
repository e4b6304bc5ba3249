"""Serving over HTTP: a FastAPI app for search, embedding and reranking (``bgekit serve``)."""

from bgekit.serve.app import create_app

__all__ = ["create_app"]
