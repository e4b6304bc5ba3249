"""The HTTP API on FastAPI: OpenAI-, TEI- and Cohere-shaped routes over one model worker.

Routes (only those whose model is loaded are served):

- ``POST /v1/embeddings`` (OpenAI), ``POST /embed``, ``/embed_sparse``, ``/embed_all`` (TEI) with an
  embedder; sparse and multi-vector routes with a BGE-M3 embedder.
- ``POST /rerank`` (TEI) and ``POST /v1/rerank`` (Cohere) with a reranker.
- ``POST /search`` with an index (or a store).

With a multimodal (BGE-VL) embedder, ``/v1/embeddings`` items may be ``{"text", "image"}`` objects and
``/search`` takes ``image``: base64 or data-URI images, and files on the server only inside
``ServerConfig.image_root`` (``bgekit.multimodal.payload``); nothing is fetched from a URL.
- ``GET /info``, ``GET /health`` (503 until the model has answered a warm-up forward pass), ``GET /metrics``
  (Prometheus).

Requests are validated by pydantic (422 naming the field), tokenized on one tokenizer thread (fast tokenizers
are not re-entrant), and queued for the one model worker, which batches many
requests' texts into one engine call (``bgekit.serve.worker``). Limits, the API key and the Host check are
middleware (``bgekit.serve.middleware``) configured by :class:`~bgekit.serve.config.ServerConfig`. Client
mistakes get a 4xx naming the problem; server faults a 500 with a generic message, logged in full.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime, and
# the request models are defined inside create_app (pydantic is imported only when serving).
import asyncio
import base64
import contextlib
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from bgekit.errors import BgekitError, ConfigError, DataFormatError, InputError
from bgekit.inference.ranking import ranked_indices
from bgekit.inference.reranker import sigmoid
from bgekit.inference.runtime import GRAPH_BACKENDS
from bgekit.optional import require_fastapi
from bgekit.serve.config import ServerConfig
from bgekit.serve.metrics import ServerMetrics
from bgekit.serve.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    HostCheckMiddleware,
    MetricsMiddleware,
    error_body,
)
from bgekit.serve.worker import ModelWorker

logger = logging.getLogger("bgekit.serve")

OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect")
"""Routes answered without the API key: probes and the schema."""

CLIENT_ERRORS = (InputError, ConfigError, DataFormatError)
"""bgekit errors that are the request's fault (400); any other error is the server's (500)."""

PROMPT_KINDS = {None: "text", "query": "query", "passage": "passage", "document": "passage"}
"""TEI's ``prompt_name`` / the OpenAI route's ``input_type`` -> the embedder's instruction."""


class HTTPProblem(Exception):
    """An answer other than 200 that a route gives on purpose."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def public_name(name_or_path: str | None) -> str | None:
    """A model's name for clients: a hub name as it is, a local folder by its last part (never a path)."""
    if name_or_path is None:
        return None
    if os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or os.path.isdir(name_or_path):
        return os.path.basename(os.path.normpath(name_or_path))
    return name_or_path


def create_app(
    index: Any = None,
    *,
    embedder: Any = None,
    reranker: Any = None,
    config: ServerConfig | None = None,
) -> Any:
    """A FastAPI app serving an embedder, a reranker and/or an index (or a store) through one model worker.

    Args:
        index: searched by ``POST /search``; its embedder also serves the embedding routes. Anything with
            ``search(queries, top_k, mode=, weights=, reranker=, rerank_top_k=)`` and ``embedder``.
        embedder: serves the embedding routes when there is no index.
        reranker: serves ``/rerank`` and ``/v1/rerank``, and reranks ``/search`` hits unless a request
            says ``"rerank": false``.
        config: limits and security (:class:`ServerConfig`; its defaults when ``None``).

    Example:
        >>> app = create_app(embedder=Embedder("BAAI/bge-small-en-v1.5"))   # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
    """
    fastapi = require_fastapi()
    import orjson
    from fastapi.concurrency import run_in_threadpool
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request

    class JSONResponse(Response):  # noqa: N807 - a drop-in for starlette's, serialising with orjson
        """JSON by orjson: numpy arrays are written straight from their buffers, float32 values with
        the shortest text that reads back to the same float32."""

        media_type = "application/json"

        def render(self, content: Any) -> bytes:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)

    from bgekit.multimodal.embedder import MultimodalEmbedder
    from bgekit.multimodal.images import to_rgb
    from bgekit.multimodal.index import MultimodalIndex
    from bgekit.multimodal.payload import decode_image_reference

    if index is None and embedder is None and reranker is None:
        raise ConfigError("create_app needs an index, an embedder or a reranker to serve")
    config = config or ServerConfig()
    embedder = embedder if embedder is not None else getattr(index, "embedder", None)
    m3 = embedder is not None and getattr(embedder, "m3_heads", None) is not None
    multimodal = isinstance(embedder, MultimodalEmbedder)
    model_name = config.served_model_name or public_name(getattr(embedder, "name_or_path", None))
    reranker_name = public_name(getattr(reranker, "name_or_path", None)) or (
        type(reranker).__name__ if reranker is not None else None
    )
    input_limit = None  # None: each kind's own limit (query_max_length / passage_max_length)
    if embedder is not None and config.max_input_length is not None:
        input_limit = min(config.max_input_length, embedder.max_length_limit)
    metrics = ServerMetrics()
    # one tokenizer thread, off the event loop and the model's thread: fast tokenizers are not re-entrant,
    # and a pool of threads would each grow a malloc arena of their own
    tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="bgekit-tokenizer")
    max_texts, max_top = config.max_client_batch_size, config.max_top_k

    # ----------------------------------------------------------------------- what the worker runs
    def run_embed(key: Any, features: list[Any]) -> list[Any]:
        heads = key[1]
        out = embedder.encode_features(features, heads, normalize=False)
        if heads is None:
            return list(out)
        if heads[1]:
            return list(out["lexical_weights"])
        return list(out["colbert_vecs"])

    pair_protocol = _takes_normalize(reranker)  # a Reranker: pairs tokenized off the model's thread

    def run_rerank(key: Any, pairs: list[Any]) -> list[float]:
        if pair_protocol:  # TokenizedPair items from many requests, one engine run
            return reranker.score_tokenized(pairs, normalize=False).tolist()
        scores = reranker.compute_score(pairs)  # another scorer (M3's): raw (query, text) pairs
        if scores and isinstance(scores[0], list):  # several cutoff layers: the last one scores
            scores = scores[-1]
        return [float(s) for s in scores]

    def run_search(key: Any, queries: list[str]) -> list[Any]:
        _, top_k, mode, weights, rerank, rerank_top_k = key
        return list(
            index.search(
                queries,
                top_k,
                mode=mode,
                weights=dict(weights) if weights else None,
                reranker=reranker if rerank else None,
                rerank_top_k=rerank_top_k,
            )
        )

    def run_embed_images(key: Any, items: list[tuple[Any, Any]]) -> list[Any]:
        # items are (token features or None, decoded RGB image or None), prepared off this thread; the
        # engine run is the one encode() makes over the same items
        prepared, images = [f for f, _ in items], [image for _, image in items]
        return list(embedder.encode_tokenized(prepared, images, normalize=False))

    def run_search_images(key: Any, items: list[tuple[str | None, Any]]) -> list[Any]:
        _, top_k, mode, with_text = key
        texts = [text for text, _ in items] if with_text else None
        images = [image for _, image in items]
        return list(index.search(texts, top_k, images=images, mode=mode))

    # tokenized here, not on the worker thread: a request's tokenization on the tokenizer thread may run
    # while the worker warms up, and a fast tokenizer used by two threads at once fails ("Already borrowed")
    item_protocol = multimodal and not embedder.token_features  # a model that reads whole prompts
    if item_protocol:
        warmup_items = embedder.tokenize_items(["ready"], [None], embedder.max_length_limit)
    elif embedder is not None:
        warmup_features = embedder.tokenize(["ready"], 8)

    if reranker is not None:
        warmup_pairs = (
            reranker.tokenize_pairs([("ready", "ready")]) if pair_protocol else [("ready", "ready")]
        )

    served_models = list({id(m): m for m in (embedder, reranker) if m is not None}.values())
    # every model runs as an ONNX Runtime / OpenVINO graph: torch only pools, normalises and slices
    graph_only = all(getattr(m, "backend", "torch") in GRAPH_BACKENDS for m in served_models)
    torch_threads = torch.get_num_threads()

    def warmup() -> None:
        if item_protocol:
            embedder.encode_tokenized(warmup_items, [None], normalize=False)
        elif embedder is not None:
            embedder.encode_features(warmup_features, None, normalize=False)
        if reranker is not None:
            run_rerank(("rerank",), warmup_pairs)
        if graph_only:
            # the graphs keep the threads they were built with; torch's small work around them runs on
            # one thread, so torch's OpenMP threads do not wake up to compete with the runtime's own
            # threads (and the event loop) for the cores. torch keeps a count per thread: this sets the
            # worker threads' count and the default of threads started later; restored when it stops.
            torch.set_num_threads(1)

    runners: dict[str, Any] = {"embed": run_embed, "rerank": run_rerank, "search": run_search}
    if multimodal:
        runners.update(embed_images=run_embed_images, search_images=run_search_images)
    for served in served_models:
        set_streams = getattr(served, "set_streams", None)
        if set_streams is not None:
            set_streams(config.streams)
        elif config.streams != 1:
            raise ConfigError(
                f"streams={config.streams} needs backend='openvino'; {type(served).__name__} has none"
            )
    worker = ModelWorker(
        runners,
        max_batch_tokens=config.max_batch_tokens,
        batch_wait=config.batch_wait,
        warmup=warmup,
        stats=metrics,
        threads=config.streams,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        worker.start()
        yield
        # uvicorn has let requests in flight finish (graceful_timeout); stop after what is queued
        await run_in_threadpool(worker.stop, config.graceful_timeout)
        if graph_only:
            torch.set_num_threads(torch_threads)
        tokenizer_thread.shutdown(wait=False)

    app = fastapi.FastAPI(
        title="bgekit",
        description="Embeddings (OpenAI- and TEI-compatible), BGE-M3 sparse and multi-vector outputs, "
        "reranking (TEI- and Cohere-compatible) and search.",
        lifespan=lifespan,
    )
    app.state.worker, app.state.metrics, app.state.config = worker, metrics, config
    app.state.index = index
    app.state.embedder = embedder

    # ---------------------------------------------------------------------------------- errors
    def problem(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    @app.exception_handler(HTTPProblem)
    def _problem(request: Any, exc: HTTPProblem) -> Any:
        return problem(exc.status, exc.message, exc.headers)

    @app.exception_handler(BgekitError)
    def _bgekit_error(request: Any, exc: BgekitError) -> Any:
        if isinstance(exc, CLIENT_ERRORS):
            return problem(400, str(exc))
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal server error (logged on the server)")

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Any, exc: Any) -> Any:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        body = error_body(422, "; ".join(parts) or "invalid request")
        body["detail"] = jsonable_encoder(exc.errors())  # FastAPI's documented 422 shape
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Any, exc: Any) -> Any:
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    def _fault(request: Any, exc: Exception) -> Any:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal server error (logged on the server)")

    # ------------------------------------------------------------------------------- helpers
    def check_count(count: int, field: str) -> None:
        if count > max_texts:
            raise HTTPProblem(
                413,
                f"{field} has {count} items; this server takes at most {max_texts} per request "
                "(--max-client-batch-size)",
            )

    def check_texts(texts: list[str], field: str) -> None:
        check_count(len(texts), field)
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise HTTPProblem(
                    400, f"{field}[{i}] holds a lone surrogate at position {exc.start}: not valid Unicode"
                ) from None

    def features_of(texts: list[str], kind: str, truncate: bool | None, field: str) -> list[Any]:
        started = time.perf_counter()
        prepared, limit = embedder.prepare(texts, kind, input_limit)
        cut = config.auto_truncate if truncate is None else truncate
        features = embedder.tokenize(prepared, limit, truncate=cut)
        if not cut:
            for i, feature in enumerate(features):
                if len(feature["input_ids"]) > limit:
                    raise HTTPProblem(
                        413,
                        f"{field}[{i}] has {len(feature['input_ids'])} tokens, more than the limit of "
                        f"{limit}; shorten it or send truncate=true",
                    )
        metrics.tokenize_seconds.observe(time.perf_counter() - started)
        return features

    async def embed(
        request: Any, heads: Any, texts: list[str], kind: str, truncate: bool | None, field: str
    ) -> tuple[list[Any], int]:
        """Tokenize ``texts`` on the tokenizer thread, run them on the worker: (outputs, token count)."""
        if item_protocol:
            return await embed_items(request, list(texts), kind, field)
        check_texts(texts, field)
        if not texts:
            return [], 0
        worker.expect()  # the worker holds its next group open briefly for this request
        try:
            loop = asyncio.get_running_loop()
            features = await loop.run_in_executor(tokenizer_thread, features_of, texts, kind, truncate, field)
        except BaseException:
            worker.unexpect()
            raise
        sizes = [len(f["input_ids"]) for f in features]
        return await submit(request, ("embed", heads), features, sizes, expected=True), sum(sizes)

    async def submit(
        request: Any, key: Any, items: list[Any], tokens: int | list[int], expected: bool = False
    ) -> list[Any]:
        """Queue ``items`` for the worker; wait for them, the request timeout or the client leaving.
        ``tokens``: the request's tokens, or each item's (the worker then splits a group fairly by them)."""
        if worker.failed is not None:
            if expected:
                worker.unexpect()
            raise HTTPProblem(503, "the model failed to start; see the server's log")
        try:
            sizes = tokens if isinstance(tokens, list) else None
            total = sum(tokens) if isinstance(tokens, list) else tokens
            future = asyncio.wrap_future(worker.submit(key, items, total, expected=expected, sizes=sizes))
        except RuntimeError:
            raise HTTPProblem(503, "the server is shutting down", {"Retry-After": "1"}) from None
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait(
                {future, gone}, timeout=config.request_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if future in done:
            return future.result()
        future.cancel()  # a job the worker has not started is dropped; a running one finishes unread
        if gone in done:
            raise HTTPProblem(499, "the client closed the connection")
        raise HTTPProblem(
            503,
            f"the request waited more than {config.request_timeout:g} s for the model; retry later",
            {"Retry-After": "1"},
        )

    def decode_images(refs: list[Any], names: list[str]) -> list[Any]:
        """Request images as RGB ``PIL`` images (``None`` kept); an InputError names the field at fault."""
        out: list[Any] = []
        for ref, where in zip(refs, names, strict=True):
            if ref is None:
                out.append(None)
                continue
            data = decode_image_reference(
                ref, where, file_root=config.image_root, max_bytes=config.max_image_bytes
            )
            try:
                out.append(to_rgb(data))
            except (OSError, ValueError, TypeError) as exc:
                raise InputError(f"{where}: {exc}") from None
        return out

    def item_inputs(
        texts: list[str | None], refs: list[Any], kind: str, field: str
    ) -> tuple[list[Any], list[Any]]:
        """Token features of the items' texts and their decoded images (run on the tokenizer thread)."""
        started = time.perf_counter()
        images = decode_images(refs, [f"{field}[{i}].image" for i in range(len(refs))])
        role = {"query": "query", "passage": "passage"}.get(kind, "plain")
        prepared_texts, checked, _ = embedder.prepare_items(texts, images, role)
        _, limit = embedder.prepare([], kind, input_limit)
        cut = config.auto_truncate
        features = embedder.tokenize_items(prepared_texts, checked, limit, truncate=cut)
        for i, feature in enumerate(features):
            if isinstance(feature, dict) and not cut and len(feature["input_ids"]) > limit:
                raise HTTPProblem(
                    413,
                    f"{field}[{i}].text has {len(feature['input_ids'])} tokens, more than the limit "
                    f"of {limit}; shorten it",
                )
        metrics.tokenize_seconds.observe(time.perf_counter() - started)
        return features, checked

    async def embed_items(request: Any, items: list[Any], kind: str, field: str) -> tuple[list[Any], int]:
        """Embed a list of texts and ``{"text", "image"}`` items: (outputs, text + image tokens)."""
        check_count(len(items), field)
        texts: list[str | None] = []
        refs: list[Any] = []
        for i, item in enumerate(items):
            text, ref = (item, None) if isinstance(item, str) else (item.text, item.image)
            if text is None and ref is None:
                raise HTTPProblem(400, f"{field}[{i}]: give a text, an image or both")
            if ref is not None and not multimodal:
                raise HTTPProblem(
                    400,
                    f"{field}[{i}].image: this server's model embeds texts only; images need a "
                    "multimodal (BGE-VL) model",
                )
            texts.append(text)
            refs.append(ref)
        if all(ref is None for ref in refs) and not item_protocol:
            return await embed(request, None, [t or "" for t in texts], kind, None, field)
        check_texts([text or "" for text in texts], field)
        worker.expect()
        try:
            loop = asyncio.get_running_loop()
            features, images = await loop.run_in_executor(
                tokenizer_thread, item_inputs, texts, refs, kind, field
            )
        except BaseException:
            worker.unexpect()
            raise
        tokens = sum(
            len(f["input_ids"]) if isinstance(f, dict) else len(f) // 4 for f in features if f is not None
        )
        tokens += embedder.image_tokens * sum(image is not None for image in images)
        items_in = list(zip(features, images, strict=True))
        return await submit(request, ("embed_images",), items_in, tokens, expected=True), tokens

    async def search_images(body: Any, request: Any) -> Any:
        if not isinstance(index, MultimodalIndex):
            raise HTTPProblem(400, "image: this server's index is not multimodal; search it by text query")
        if body.rerank:
            raise HTTPProblem(400, "rerank=true: a text reranker cannot rerank image queries")
        single = not isinstance(body.image, list)
        refs = [body.image] if single else list(body.image)
        queries = None if body.query is None else texts_of(body.query)
        if queries is not None and (len(queries) != len(refs) or isinstance(body.query, str) != single):
            raise HTTPProblem(
                400,
                f"query and image pair up item by item (composed queries), but {len(queries)} "
                f"query text(s) and {len(refs)} image(s) were given",
            )
        check_count(len(refs), "image")
        if queries is not None:
            check_texts(queries, "query")
        if not refs:
            return JSONResponse({"results": []})
        names = ["image"] if single else [f"image[{i}]" for i in range(len(refs))]
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(tokenizer_thread, decode_images, refs, names)
        key = ("search_images", body.top_k, body.mode, queries is not None)
        tokens = sum(len(q) for q in queries or []) // 4 + embedder.image_tokens * len(refs)
        texts: list[str | None] = list(queries) if queries is not None else [None] * len(refs)
        results = await submit(request, key, list(zip(texts, images, strict=True)), tokens)
        return JSONResponse(
            {
                "results": [
                    {"query": q, "hits": [hit.to_dict() for hit in hits]}
                    for q, hits in zip(texts, results, strict=True)
                ]
            }
        )

    def dense_rows(vectors: list[np.ndarray], dimensions: int | None, normalize: bool) -> np.ndarray:
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, embedder.dim), np.float32)
        if dimensions is not None:
            if dimensions > matrix.shape[1]:
                raise HTTPProblem(
                    400, f"dimensions={dimensions} is larger than the model's {matrix.shape[1]} dimensions"
                )
            matrix = matrix[:, :dimensions]
        if normalize:
            matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(matrix, dtype=np.float32)

    def texts_of(value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    # ------------------------------------------------------------------------------- schemas
    Texts = str | list[str]
    ImageRef = str | dict[str, Any]

    class EmbeddingItem(BaseModel):
        """One item for a multimodal model: a text, an image, or both (a composed query)."""

        model_config = ConfigDict(extra="forbid")
        text: str | None = None
        image: ImageRef | None = Field(
            None, description='a base64 data URI or base64 string; {"path": ...} with --image-root'
        )

    class EmbeddingRequest(BaseModel):
        """OpenAI's embeddings request (``input_type`` is bgekit's: which instruction applies)."""

        input: str | list[str | EmbeddingItem] = Field(
            ..., description='a text or a list of texts (and {"text", "image"} items for a multimodal model)'
        )
        model: str | None = None
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int | None = Field(None, ge=1, description="keep the first dimensions (Matryoshka)")
        user: str | None = None
        input_type: Literal["query", "passage", "document"] | None = None

    class EmbeddingData(BaseModel):
        object: Literal["embedding"] = "embedding"
        index: int
        embedding: list[float] | str

    class Usage(BaseModel):
        prompt_tokens: int
        total_tokens: int

    class EmbeddingResponse(BaseModel):
        object: Literal["list"] = "list"
        data: list[EmbeddingData]
        model: str | None
        usage: Usage

    class EmbedRequest(BaseModel):
        """TEI's embed request."""

        inputs: Texts
        normalize: bool = True
        truncate: bool | None = None
        prompt_name: Literal["query", "passage", "document"] | None = None
        dimensions: int | None = Field(None, ge=1)

    class SparseRequest(BaseModel):
        inputs: Texts
        truncate: bool | None = None
        prompt_name: Literal["query", "passage", "document"] | None = None

    class SparseValue(BaseModel):
        index: int
        value: float

    class RerankRequest(BaseModel):
        """TEI's rerank request (``top_n`` keeps the best only)."""

        query: str
        texts: list[str]
        top_n: int | None = Field(None, ge=1, le=max_top)
        raw_scores: bool = False
        return_text: bool = False
        truncate: bool | None = None

    class RankedText(BaseModel):
        index: int
        score: float
        text: str | None = None

    class CohereDocument(BaseModel):
        text: str

    class CohereRerankRequest(BaseModel):
        """Cohere's rerank request."""

        query: str
        documents: list[str | CohereDocument]
        model: str | None = None
        top_n: int | None = Field(None, ge=1, le=max_top)
        return_documents: bool = False

    class CohereResult(BaseModel):
        index: int
        relevance_score: float
        document: CohereDocument | None = None

    class CohereRerankResponse(BaseModel):
        id: str
        results: list[CohereResult]
        meta: dict[str, Any]

    class SearchRequest(BaseModel):
        query: Texts | None = None
        image: ImageRef | list[ImageRef] | None = Field(
            None, description="a multimodal index: one image or a list pairing up with query"
        )
        top_k: int = Field(10, ge=1, le=max_top)
        mode: Literal["dense", "sparse", "hybrid"] | None = None
        weights: dict[Literal["dense", "sparse"], float] | None = None
        rerank: bool | None = None
        rerank_top_k: int = Field(100, ge=1, le=max_top)

        @model_validator(mode="after")
        def _query_or_image(self) -> Any:
            if self.query is None and self.image is None:
                raise ValueError("give query (a text or a list), or image with a multimodal index")
            return self

    class SearchHit(BaseModel):
        id: str
        score: float
        title: str
        text: str
        retrieval_score: float | None = None

    class SearchResult(BaseModel):
        query: str | None
        hits: list[SearchHit]

    class SearchResponse(BaseModel):
        results: list[SearchResult]

    routes: list[str] = []

    # ------------------------------------------------------------------------------- routes
    if embedder is not None:
        routes += ["/v1/embeddings", "/embed"]

        @app.post("/v1/embeddings", response_model=EmbeddingResponse)
        async def openai_embeddings(body: EmbeddingRequest, request: Request) -> Any:
            """Embeddings as OpenAI's API returns them (the ``openai`` client works unchanged)."""
            items = texts_of(body.input)  # type: ignore[arg-type]
            if not items:
                raise HTTPProblem(400, "input is an empty list; send at least one text")
            vectors, tokens = await embed_items(request, items, PROMPT_KINDS[body.input_type], "input")
            rows = dense_rows(vectors, body.dimensions, bool(embedder.settings.normalize))
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()
                    if body.encoding_format == "base64"
                    else row,
                }
                for i, row in enumerate(rows)
            ]
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            return JSONResponse(
                {"object": "list", "data": data, "model": body.model or model_name, "usage": usage}
            )

        @app.post("/embed", response_model=list[list[float]])
        async def tei_embed(body: EmbedRequest, request: Request) -> Any:
            """Dense embeddings as TEI returns them: one list of floats per input."""
            texts = texts_of(body.inputs)
            kind = PROMPT_KINDS[body.prompt_name]
            vectors, _ = await embed(request, None, texts, kind, body.truncate, "inputs")
            return JSONResponse(dense_rows(vectors, body.dimensions, body.normalize))

    if m3:
        routes += ["/embed_sparse", "/embed_all"]

        @app.post("/embed_sparse", response_model=list[list[SparseValue]])
        async def tei_embed_sparse(body: SparseRequest, request: Request) -> Any:
            """BGE-M3 lexical weights: ``[{"index": token_id, "value": weight}]`` per input, ready for a
            vector database's sparse field."""
            texts = texts_of(body.inputs)
            kind, heads = PROMPT_KINDS[body.prompt_name], (False, True, False)
            weights, _ = await embed(request, heads, texts, kind, body.truncate, "inputs")
            return JSONResponse(
                [
                    [
                        {"index": int(i), "value": float(v)}
                        for i, v in zip(ids.tolist(), values.tolist(), strict=True)
                    ]
                    for ids, values in weights
                ]
            )

        @app.post("/embed_all", response_model=list[list[list[float]]])
        async def tei_embed_all(body: SparseRequest, request: Request) -> Any:
            """BGE-M3 multi-vector (ColBERT) embeddings: one vector per token after the first, per input."""
            texts = texts_of(body.inputs)
            kind, heads = PROMPT_KINDS[body.prompt_name], (False, False, True)
            vectors, _ = await embed(request, heads, texts, kind, body.truncate, "inputs")
            return JSONResponse([np.ascontiguousarray(v, dtype=np.float32) for v in vectors])

    if reranker is not None:
        routes += ["/rerank", "/v1/rerank"]

        async def scores_of(request: Any, query: str, texts: list[str], field: str) -> np.ndarray:
            check_texts([query], "query")
            check_texts(texts, field)
            if not texts:
                return np.zeros(0)
            pairs = [(query, t) for t in texts]
            if not pair_protocol:
                tokens = sum(len(query) + len(t) for t in texts) // 4 + len(texts)  # no tokenizer here
                return np.asarray(await submit(request, ("rerank",), pairs, tokens), dtype=np.float64)
            worker.expect()  # as for embeddings: the worker holds its next group open for these pairs
            try:
                loop = asyncio.get_running_loop()
                tokenized = await loop.run_in_executor(tokenizer_thread, tokenize_pairs, pairs)
            except BaseException:
                worker.unexpect()
                raise
            sizes = [len(p.feature["input_ids"]) for p in tokenized]
            raw = await submit(request, ("rerank",), tokenized, sizes, expected=True)
            return np.asarray(raw, dtype=np.float64)

        def tokenize_pairs(pairs: list[tuple[str, str]]) -> list[Any]:
            started = time.perf_counter()
            tokenized = reranker.tokenize_pairs(pairs)
            metrics.tokenize_seconds.observe(time.perf_counter() - started)
            return tokenized

        def normalized(scores: np.ndarray) -> np.ndarray:
            # a cross-encoder's logits go through a sigmoid; a scorer without logits (M3) is left as it is
            return sigmoid(scores) if _takes_normalize(reranker) else scores

        @app.post("/rerank", response_model=list[RankedText])
        async def tei_rerank(body: RerankRequest, request: Request) -> Any:
            """TEI's rerank: ``[{"index", "score"(, "text")}]`` best first (sigmoid unless raw_scores)."""
            raw = await scores_of(request, body.query, body.texts, "texts")
            scores = raw if body.raw_scores else normalized(raw)
            order = ranked_indices(scores.tolist(), body.top_n)
            return JSONResponse(
                [
                    {
                        "index": i,
                        "score": float(scores[i]),
                        **({"text": body.texts[i]} if body.return_text else {}),
                    }
                    for i in order
                ]
            )

        @app.post("/v1/rerank", response_model=CohereRerankResponse)
        async def cohere_rerank(body: CohereRerankRequest, request: Request) -> Any:
            """Cohere's rerank: ``results`` of ``index`` and ``relevance_score`` (0..1), best first."""
            texts = [d if isinstance(d, str) else d.text for d in body.documents]
            scores = normalized(await scores_of(request, body.query, texts, "documents"))
            order = ranked_indices(scores.tolist(), body.top_n)
            results = [
                {
                    "index": i,
                    "relevance_score": float(scores[i]),
                    **({"document": {"text": texts[i]}} if body.return_documents else {}),
                }
                for i in order
            ]
            meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
            return JSONResponse({"id": uuid.uuid4().hex, "results": results, "meta": meta})

    if index is not None:
        routes += ["/search"]

        @app.post("/search", response_model=SearchResponse)
        async def search(body: SearchRequest, request: Request) -> Any:
            """The ``top_k`` best documents of each query, reranked when the server has a reranker."""
            if body.image is not None:
                return await search_images(body, request)
            use_reranker = reranker is not None if body.rerank is None else body.rerank
            if use_reranker and reranker is None:
                raise HTTPProblem(
                    400, "rerank=true but this server has no reranker: start it with --reranker"
                )
            queries = texts_of(body.query if body.query is not None else [])  # checked: never None
            check_texts(queries, "query")
            if not queries:
                return {"results": []}
            weights = tuple(sorted(body.weights.items())) if body.weights else None
            key = ("search", body.top_k, body.mode, weights, use_reranker, body.rerank_top_k)
            tokens = sum(len(q) for q in queries) // 4 + len(queries)
            results = await submit(request, key, queries, tokens)
            return JSONResponse(
                {
                    "results": [
                        {"query": q, "hits": [hit.to_dict() for hit in hits]}
                        for q, hits in zip(queries, results, strict=True)
                    ]
                }
            )

    routes += ["/info", "/health", "/metrics"]

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """What this server runs: models, dimensions, limits."""
        body: dict[str, Any] = {"routes": routes, "version": _version()}
        if embedder is not None:
            heads = ["dense"] + (["sparse", "colbert"] if m3 else [])
            body["model"] = {
                "id": model_name,
                "kind": embedder.settings.kind,
                "dimension": embedder.dim,
                "max_input_length": input_limit or embedder.settings.passage_max_length,
                "dtype": embedder.dtype,
                "backend": embedder.backend,
                "quantization": getattr(embedder, "quantization", None),  # a multimodal model has none
                "heads": heads,
                "normalize": bool(embedder.settings.normalize),
            }
        if reranker is not None:
            body["reranker"] = {"id": reranker_name, "kind": getattr(reranker, "kind", "m3")}
        if index is not None:
            body["index"] = {"documents": len(index), "modes": list(index.modes)}
        body["limits"] = {
            "max_client_batch_size": max_texts,
            "max_input_length": input_limit,
            "auto_truncate": config.auto_truncate,
            "payload_limit": config.payload_limit,
            "max_concurrent_requests": config.max_concurrent_requests,
            "max_top_k": max_top,
            "request_timeout": config.request_timeout,
        }
        return body

    @app.get("/health")
    async def health() -> Any:
        """200 once the model has answered a warm-up forward pass; 503 before, or if it failed."""
        worker.start()
        if worker.failed is not None or (worker.ready.is_set() and not worker.alive):
            return problem(503, "the model worker failed; see the server's log")
        if not worker.ready.is_set():
            return problem(503, "loading: the model has not answered its warm-up pass yet")
        return {"status": "ok", "queue_depth": worker.depth}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Any:
        """Prometheus exposition text."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    app.state.routes = routes
    # outermost first: metrics see every answer; the Host check and the key come before any body is read
    app.add_middleware(ConcurrencyLimitMiddleware, limit=config.max_concurrent_requests)
    app.add_middleware(BodyLimitMiddleware, limit=config.payload_limit)
    if config.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key, open_paths=OPEN_PATHS)
    if config.allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=config.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


async def _client_gone(request: Any) -> None:
    """Returns when the client disconnects (the body has been read, so the next message is the end)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _takes_normalize(reranker: Any) -> bool:
    from bgekit.inference.reranker import Reranker

    return isinstance(reranker, Reranker)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bgekit")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"
