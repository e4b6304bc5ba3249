"""Serving over HTTP (``bgekit serve``): OpenAI-, TEI- and Cohere-shaped routes over one model worker."""

from bgekit.serve.app import create_app
from bgekit.serve.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
