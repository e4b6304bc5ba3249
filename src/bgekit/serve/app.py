"""The HTTP API: ``POST /search``, ``POST /embed``, ``POST /rerank`` and ``GET /health``, on FastAPI.

Requests are validated by pydantic (a malformed body gets a 422 naming the field); bgekit's own errors
(an unsupported mode, a reranker that is not loaded) become 400 with the message. Model calls are
serialised by a lock: one request uses the model at a time, each with the batching engine's full batch.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime, and
# the request models are defined inside create_app (pydantic is imported only when serving).
import threading
from typing import Any, Literal

from bgekit.errors import BgekitError, ConfigError
from bgekit.inference.reranker import ranked_indices


def require_fastapi() -> Any:
    try:
        import fastapi
    except ImportError as exc:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'bgekit[serve]'") from exc
    return fastapi


def create_app(index: Any = None, *, embedder: Any = None, reranker: Any = None) -> Any:
    """A FastAPI app over a :class:`~bgekit.index.SearchIndex` (and/or an embedder, and a reranker).

    Args:
        index: the index ``/search`` searches; its embedder also serves ``/embed``.
        embedder: serves ``/embed`` when there is no index.
        reranker: reranks ``/search`` hits (unless a request says ``"rerank": false``) and serves
            ``/rerank``.

    Example:
        >>> app = create_app(SearchIndex.load("scifact-index"))   # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
    """
    fastapi = require_fastapi()
    from pydantic import BaseModel, Field

    if index is None and embedder is None and reranker is None:
        raise ConfigError("create_app needs an index, an embedder or a reranker to serve")
    embedder = embedder if embedder is not None else getattr(index, "embedder", None)
    lock = threading.Lock()

    class SearchRequest(BaseModel):
        query: str | list[str]
        top_k: int = Field(10, ge=1, le=10_000)
        mode: Literal["dense", "sparse", "hybrid"] | None = None
        weights: dict[str, float] | None = None
        rerank: bool | None = None
        rerank_top_k: int = Field(100, ge=1, le=10_000)

    class EmbedRequest(BaseModel):
        texts: str | list[str]
        kind: Literal["query", "passage"] = "passage"

    class RerankRequest(BaseModel):
        query: str
        passages: list[str]
        top_k: int | None = Field(None, ge=1)

    app = fastapi.FastAPI(title="bgekit", description="Search, embed and rerank with bgekit.")

    @app.exception_handler(BgekitError)
    def _bgekit_error(request: Any, exc: BgekitError) -> Any:
        return fastapi.responses.JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "documents": len(index) if index is not None else 0,
            "modes": index.modes if index is not None else [],
            "model": getattr(embedder, "name_or_path", None),
            "reranker": getattr(reranker, "name_or_path", None),
        }

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        if index is None:
            raise ConfigError("this server has no index: start it with --index")
        use_reranker = reranker is not None if request.rerank is None else request.rerank
        if use_reranker and reranker is None:
            raise ConfigError("rerank=true but this server has no reranker: start it with --reranker")
        queries = [request.query] if isinstance(request.query, str) else request.query
        with lock:
            results = index.search(
                queries,
                request.top_k,
                mode=request.mode,
                weights=request.weights,
                reranker=reranker if use_reranker else None,
                rerank_top_k=request.rerank_top_k,
            )
        return {
            "results": [
                {"query": query, "hits": [hit.to_dict() for hit in hits]}
                for query, hits in zip(queries, results, strict=True)
            ]
        }

    @app.post("/embed")
    def embed(request: EmbedRequest) -> dict[str, Any]:
        if embedder is None:
            raise ConfigError("this server has no embedder: start it with --index or --model")
        from bgekit.inference.m3 import dense_array

        texts = [request.texts] if isinstance(request.texts, str) else request.texts
        encode = embedder.encode_queries if request.kind == "query" else embedder.encode_corpus
        with lock:
            vectors: Any = dense_array(encode(texts), len(texts)) if texts else []
        return {"embeddings": [list(map(float, row)) for row in vectors]}

    @app.post("/rerank")
    def rerank(request: RerankRequest) -> dict[str, Any]:
        if reranker is None:
            raise ConfigError("this server has no reranker: start it with --reranker")
        if not request.passages:
            return {"ranking": []}
        with lock:
            scores = list(reranker.compute_score([(request.query, p) for p in request.passages]))
        # Reranker.rank's order for any compute_score reranker (M3Rescorer has no rank of its own)
        order = ranked_indices(scores, request.top_k)
        return {"ranking": [{"index": i, "score": float(scores[i])} for i in order]}

    return app
