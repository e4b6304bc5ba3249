"""Encoding on a Ray cluster: an encoder class for ``map_batches`` and the one-call ``encode_with_ray``.

Ray Data runs a pool of actors; each loads the model once (``RayEncoder.__init__``) and encodes through
``Embedder.encode_corpus``, so the token-budget batching of one machine runs inside every actor. One actor
per GPU (``gpus_per_actor=1``) or per ``cpus_per_actor`` CPU cores.

``encode_with_ray`` plans deterministic shards of the input (see ``bgekit.distributed.shards``), skips
those whose part is already written, and gives each remaining shard to an actor, which reads its rows,
encodes them and writes its part atomically. A worker that dies is restarted by Ray and its shard run
again (``max_restarts=-1``, ``max_task_retries=-1``); since a part is renamed into place only when whole
and each row belongs to one shard, every id appears exactly once in the output.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bgekit import errors as bgekit_errors
from bgekit.distributed.shards import (
    DEFAULT_ROWS_PER_SHARD,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PART_PREFIX,
    Shard,
    TextFields,
    encoded_table,
    list_inputs,
    load_manifest,
    part_exists,
    part_name,
    plan_shards,
    read_shard_rows,
    read_shards,
    resolve_filesystem,
    save_manifest,
    write_part,
)
from bgekit.errors import BgekitError, ConfigError, DataFormatError, InputError, WorkerError
from bgekit.optional import require_ray

ray = require_ray()
import pyarrow as pa  # noqa: E402 - after the guard, which names the extra to install
import pyarrow.compute as pc  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def _embedder_class() -> Any:
    from bgekit.inference.embedder import Embedder

    return Embedder


def output_meta(embedder: Any, sparse: bool, colbert: bool) -> dict[str, Any]:
    """What the parts' ``bgekit`` metadata records about the model and the columns."""
    return {
        "format": FORMAT_VERSION,
        "model": embedder.name_or_path,
        "model_identity": embedder.fingerprint(include_runtime=False),
        "dim": embedder.dim,
        "vocab_size": embedder.vocab_size if sparse else None,
        "colbert_dim": embedder.colbert_dim if colbert else None,
    }


def _check_heads(embedder: Any, sparse: bool | None, colbert: bool) -> bool:
    m3 = embedder.m3_heads is not None
    if (sparse or colbert) and not m3:
        raise ConfigError(
            f"sparse/colbert outputs need a BGE-M3 checkpoint; {embedder.name_or_path!r} has only dense vectors"
        )
    return m3 if sparse is None else bool(sparse)


class RayEncoder:
    """A callable class for ``ray.data.Dataset.map_batches``: the model is loaded once per actor.

    Each batch (a ``pyarrow.Table``, pandas DataFrame or dict of columns with an id, a text and optionally a
    title column) comes back as a ``pyarrow.Table`` with the columns of ``bgekit.distributed.shards``:
    ``id``, ``dense`` and, for BGE-M3, ``sparse`` ``{indices, values}`` and optional ``colbert``.

    Args:
        model: a hub name or a model folder every node can read.
        embedder_kwargs: ``Embedder`` settings (``dtype``, ``batch_size``, ``max_tokens_per_batch``...);
            the device is the actor's: a GPU when Ray gave it one, else the CPU.
        sparse: BGE-M3 lexical weights (default: when the model is M3).
        colbert: BGE-M3 ColBERT vectors.
        max_length: token limit (default: the model's passage or query limit).
        fields: the input's id/title/text fields, and whether rows are queries.
        threads: torch threads in the actor (default: as Ray sets them, its CPUs).

    Example:
        >>> import ray   # doctest: +SKIP
        >>> ds = ray.data.read_parquet("s3://bucket/corpus/")   # doctest: +SKIP
        >>> out = ds.map_batches(RayEncoder, fn_constructor_kwargs={"model": "BAAI/bge-m3"},
        ...     batch_size=2048, batch_format="pyarrow", num_gpus=1,
        ...     compute=ray.data.ActorPoolStrategy(size=8))   # doctest: +SKIP
        >>> out.write_parquet("s3://bucket/embeddings/")   # doctest: +SKIP
    """

    def __init__(
        self,
        model: str,
        *,
        embedder_kwargs: dict[str, Any] | None = None,
        sparse: bool | None = None,
        colbert: bool = False,
        max_length: int | None = None,
        fields: TextFields | None = None,
        threads: int | None = None,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(max(1, int(threads)))
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.embedder = _embedder_class()(
            model, device="cuda" if gpus else "cpu", show_progress=False, **(embedder_kwargs or {})
        )
        self.sparse = _check_heads(self.embedder, sparse, colbert)
        self.colbert = bool(colbert)
        self.max_length = max_length
        self.fields = fields or TextFields()
        self.meta = output_meta(self.embedder, self.sparse, self.colbert)

    def encode_rows(self, ids: Sequence[str], items: list[Any]) -> Any:
        """Encode corpus items (or query strings) and return them as one part's ``pyarrow.Table``."""
        embedder = self.embedder
        encode = embedder.encode_queries if self.fields.queries else embedder.encode_corpus
        kwargs: dict[str, Any] = {"max_length": self.max_length} if self.max_length else {}
        lexical = colbert = None
        if not items:
            import scipy.sparse as sp

            dense = np.zeros((0, embedder.dim), np.float32)
            lexical = sp.csr_matrix((0, embedder.vocab_size), dtype=np.float32) if self.sparse else None
            colbert = [] if self.colbert else None
        elif embedder.m3_heads is None:
            dense = np.asarray(encode(items, **kwargs), dtype=np.float32)
        else:
            out = encode(
                items,
                return_sparse=self.sparse,
                return_colbert_vecs=self.colbert,
                sparse_format="csr",
                **kwargs,
            )
            dense, lexical, colbert = out["dense_vecs"], out["lexical_weights"], out["colbert_vecs"]
        return encoded_table(ids, dense, lexical, colbert, self.meta)

    def __call__(self, batch: Any) -> Any:
        table = _as_table(batch)
        names = table.column_names
        id_name = next((n for n in self.fields.id_candidates if n in names), None)
        if id_name is None or self.fields.text_field not in names:
            want = self.fields.text_field if id_name else " or ".join(self.fields.id_candidates)
            raise DataFormatError(f"the batch has no column {want!r} (columns: {', '.join(names)})")
        ids = [None if v is None else str(v) for v in table.column(id_name).to_pylist()]
        texts = table.column(self.fields.text_field).to_pylist()
        title_name = self.fields.title_field
        titles = table.column(title_name).to_pylist() if title_name and title_name in names else None
        for name, values in ((id_name, ids), (self.fields.text_field, texts)):
            if None in values:
                raise DataFormatError(f"batch row {values.index(None)}: field {name!r} is null")
        if self.fields.queries:
            items: list[Any] = texts
        else:
            items = [{"title": (titles[i] if titles else None) or "", "text": t} for i, t in enumerate(texts)]
        return self.encode_rows([str(i) for i in ids], items)


def _as_table(batch: Any) -> Any:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({k: list(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)


class ShardEncoder(RayEncoder):
    """The actor of ``encode_with_ray``: each batch row is a shard to read, encode and write as a part.

    A shard whose part already exists (a retry after the rename) is not encoded again. Subclass it and pass
    ``encoder_class=`` to ``encode_with_ray`` to change what an actor does with a shard.
    """

    def __init__(
        self, model: str, *, output_dir: str, output_filesystem: Any, input_filesystem: Any, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.output_dir = output_dir
        self.output_fs = output_filesystem
        self.input_fs = input_filesystem

    def encode_shard(self, shard: Shard) -> tuple[int, bool]:
        """Write ``shard``'s part; ``(rows, False)``, or ``(0, True)`` when it was already there."""
        if part_exists(self.output_fs, self.output_dir, shard.number):
            return 0, True
        ids, items = read_shard_rows(self.input_fs, shard, self.fields)
        write_part(self.output_fs, self.output_dir, shard.number, self.encode_rows(ids, items))
        return len(ids), False

    def __call__(self, batch: Any) -> Any:
        out: dict[str, list[Any]] = {
            k: [] for k in ("number", "rows", "seconds", "existed", "error", "message")
        }
        for row in _as_table(batch).to_pylist():
            shard = Shard.from_dict(row)
            start = time.perf_counter()
            count, existed, error, message = 0, False, "", ""
            try:
                count, existed = self.encode_shard(shard)
            except BgekitError as exc:
                # returned, not raised: Ray would bury the message under its own exception and traceback
                error, message = type(exc).__name__, str(exc)
            values = (shard.number, count, time.perf_counter() - start, existed, error, message)
            for key, value in zip(out, values, strict=True):
                out[key].append(value)
        return pa.table(out)


@dataclass(frozen=True)
class RayEncodeResult:
    """What ``encode_with_ray`` did.

    Attributes:
        output_dir: the folder of parts (read it with ``read_shards``).
        shards: shards in the plan.
        shards_written: shards encoded in this run.
        shards_skipped: shards whose part was already there (a resumed run).
        rows: ids in the output (each exactly once).
        num_actors: actors in the pool (0 when nothing was left to encode).
        seconds: wall time of the run.
    """

    output_dir: str
    shards: int
    shards_written: int
    shards_skipped: int
    rows: int
    num_actors: int
    seconds: float
    dim: int
    sparse: bool
    colbert: bool


_EMBEDDER_PLACEMENT = ("device", "devices")


def _settings_embedder(model: Any, embedder_kwargs: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """``(embedder for identity and sizes, model name for the actors, kwargs for the actors)``."""
    Embedder = _embedder_class()
    placed = sorted(k for k in _EMBEDDER_PLACEMENT if k in embedder_kwargs)
    if placed:
        raise ConfigError(
            f"embedder_kwargs {', '.join(placed)}: each actor picks its own device; "
            "use gpus_per_actor / cpus_per_actor"
        )
    if isinstance(model, Embedder):
        if embedder_kwargs:
            raise ConfigError("pass embedder_kwargs with a model name, not with an Embedder instance")
        kwargs = model._worker_kwargs()  # the settings the device pool sends its workers
        kwargs.pop("show_progress", None)
        return model, model.name_or_path, kwargs
    name = os.fspath(model)
    # two devices make the Embedder lazy: settings, tokenizer and heads are read, no weights loaded, no
    # process started, which is all the driver needs (its identity and output sizes)
    return Embedder(name, devices=["cpu", "cpu"], **embedder_kwargs), name, dict(embedder_kwargs)


def _connect(address: str | None) -> bool:
    """Attach to (or start) Ray; True when this call started it and should shut it down."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address or 'a local Ray'}: {exc}") from exc
    return True


def _pool_size(num_actors: int | None, cpus: float, gpus: float, pending: int) -> int:
    if num_actors is not None:
        if num_actors < 1:
            raise ConfigError(f"num_actors must be >= 1, got {num_actors}")
        return min(num_actors, pending)
    resources = ray.cluster_resources()
    if gpus:
        if not resources.get("GPU"):
            raise ConfigError("gpus_per_actor > 0 but the Ray cluster has no GPU")
        fit = int(resources["GPU"] // gpus)
    else:
        fit = int(resources.get("CPU", 1) // cpus)
    return max(1, min(fit, pending))


def encode_with_ray(
    model: Any,
    input: str | Sequence[str],
    output_dir: str,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    sparse: bool | None = None,
    colbert: bool = False,
    queries: bool = False,
    max_length: int | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    id_field: str | None = None,
    text_field: str = "text",
    title_field: str | None = "title",
    filesystem: Any = None,
    embedder_kwargs: dict[str, Any] | None = None,
    encoder_class: type[ShardEncoder] = ShardEncoder,
    show_progress: bool = False,
) -> RayEncodeResult:
    """Encode a JSONL/Parquet corpus on a Ray cluster into resumable Parquet parts.

    Args:
        model: a hub name or model folder every node can read, or an ``Embedder`` (its settings are used).
        input: a ``.jsonl``/``.parquet`` file, a folder of them, or a list; local paths or URIs
            (``s3://...``). JSONL rows are BEIR's ``{"_id", "title", "text"}`` or ``{"id", "text"}``.
        output_dir: the folder of parts (``part-NNNNNN.parquet``) and ``_bgekit_encode.json``.
        address: the Ray cluster (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``); ``None``: the
            one this process is attached to, else ``RAY_ADDRESS``, else a new local Ray.
        num_actors: actors in the pool (default: as many as the cluster's CPUs or GPUs hold).
        cpus_per_actor / gpus_per_actor: resources each actor reserves; with a GPU it encodes there.
        sparse: BGE-M3 lexical weights (default: when the model is M3). colbert: M3 ColBERT vectors.
        queries: encode rows as queries (query instruction, no title).
        max_length: token limit (default: the model's).
        rows_per_shard: rows per part: the unit of work, of retry and of resume.
        id_field / text_field / title_field: input fields (``id_field=None``: ``_id``, else ``id``).
        filesystem: a ``pyarrow.fs.FileSystem`` for input and output (default: from each URI).
        embedder_kwargs: ``Embedder`` settings for the actors (``dtype``, ``batch_size``...).
        encoder_class: the actor class (a ``ShardEncoder`` subclass).
        show_progress: Ray Data's progress bars.

    Returns:
        A ``RayEncodeResult``; read the vectors with ``bgekit.distributed.read_shards(output_dir)``.

    Raises:
        DataFormatError: an unreadable input, or a row without its id/text (file, line and field named),
            or an id that appears twice.
        ConfigError: bad settings, an unreachable cluster, or an output folder of another encode.

    Example:
        >>> encode_with_ray("BAAI/bge-m3", "corpus.jsonl", "emb/", address="auto", gpus_per_actor=1)   # doctest: +SKIP
        RayEncodeResult(output_dir='emb/', shards=540, shards_written=540, shards_skipped=0, ...)
    """
    start = time.perf_counter()
    if not (isinstance(encoder_class, type) and issubclass(encoder_class, ShardEncoder)):
        raise ConfigError(f"encoder_class must be a ShardEncoder subclass, got {encoder_class!r}")
    if cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise ConfigError(
            f"cpus_per_actor must be > 0 and gpus_per_actor >= 0, got {cpus_per_actor}, {gpus_per_actor}"
        )
    fields = TextFields(id_field, text_field, title_field, queries)
    embedder, model_name, actor_kwargs = _settings_embedder(model, dict(embedder_kwargs or {}))
    try:
        sparse = _check_heads(embedder, sparse, colbert)
        meta = output_meta(embedder, sparse, colbert)
    finally:
        if embedder is not model:
            embedder.close()

    paths = [input] if isinstance(input, str | os.PathLike) else list(input)
    if not paths:
        raise InputError("input names no file")
    input_fs, _ = resolve_filesystem(os.fspath(paths[0]), filesystem)
    resolved = [resolve_filesystem(os.fspath(p), filesystem)[1] for p in paths]
    files = list_inputs(resolved, input_fs)
    output_fs, root = resolve_filesystem(output_dir, filesystem)
    output_fs.create_dir(root, recursive=True)

    key = {
        "format": FORMAT_VERSION,
        "model_identity": meta["model_identity"],
        "inputs": [asdict(f) for f in files],
        "rows_per_shard": rows_per_shard,
        "fields": asdict(fields),
        "sparse": sparse,
        "colbert": bool(colbert),
        "max_length": max_length,
    }
    manifest = load_manifest(output_fs, root)
    if manifest is not None and {k: manifest.get(k) for k in key} == key:
        shards = [Shard.from_dict(s) for s in manifest["shards"]]
    elif manifest is not None:
        changed = sorted(k for k in key if manifest.get(k) != key[k])
        raise ConfigError(
            f"{output_dir!r} holds the output of another encode (different {', '.join(changed)}); "
            "write to another folder or delete it"
        )
    else:
        shards = plan_shards(files, input_fs, rows_per_shard, fields)
        if not shards:
            raise InputError(f"the input {input!r} has no rows: nothing to encode")
        first = os.fspath(paths[0])
        save_manifest(
            output_fs,
            root,
            {
                **key,
                "model": meta["model"],
                # where the input filesystem is opened again (build_search_index re-reads the documents)
                "input_uri": first if "://" in first else os.path.abspath(first),
                "shards": [s.to_dict() for s in shards],
            },
        )

    pending = [s for s in shards if not part_exists(output_fs, root, s.number)]
    actors = 0
    if pending:
        started = _connect(address)
        try:
            actors = _pool_size(num_actors, cpus_per_actor, gpus_per_actor, len(pending))
            _run_pool(
                encoder_class,
                pending,
                actors,
                cpus_per_actor,
                gpus_per_actor,
                show_progress,
                {
                    "model": model_name,
                    "embedder_kwargs": actor_kwargs,
                    "sparse": sparse,
                    "colbert": colbert,
                    "max_length": max_length,
                    "fields": fields,
                    "threads": max(1, int(cpus_per_actor)),
                    "output_dir": root,
                    "output_filesystem": output_fs,
                    "input_filesystem": input_fs,
                },
            )
        finally:
            if started:
                ray.shutdown()
    rows = _verify(output_fs, root, shards, output_dir)
    _remove_temporary(output_fs, root)
    return RayEncodeResult(
        output_dir=output_dir,
        shards=len(shards),
        shards_written=len(pending),
        shards_skipped=len(shards) - len(pending),
        rows=rows,
        num_actors=actors,
        seconds=round(time.perf_counter() - start, 3),
        dim=int(meta["dim"]),
        sparse=sparse,
        colbert=bool(colbert),
    )


def _run_pool(
    encoder_class: type[ShardEncoder],
    pending: list[Shard],
    actors: int,
    cpus: float,
    gpus: float,
    show_progress: bool,
    constructor_kwargs: dict[str, Any],
) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress
    dataset = ray.data.from_items([s.to_dict() for s in pending], override_num_blocks=len(pending))
    # Ray Data's actor pools restart a dead actor and retry its task (max_restarts=-1, max_task_retries=-1)
    encoded = dataset.map_batches(
        encoder_class,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=1,  # one shard per call: the unit of retry
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    try:
        for batch in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.filter(pc.not_equal(batch.column("error"), "")).to_pylist():
                error_class = getattr(bgekit_errors, row["error"], None)
                if not (isinstance(error_class, type) and issubclass(error_class, BgekitError)):
                    error_class = BgekitError
                raise error_class(row["message"])  # leaving the loop stops the job
    except BgekitError:
        raise
    except Exception as exc:
        raise WorkerError(f"the Ray job failed: {_first_error_line(exc)}") from exc


def _first_error_line(exc: BaseException) -> str:
    """The original error of a Ray failure (``RuntimeError: ...``), found in the traceback Ray carries."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*)$", text, re.MULTILINE)
    if found:
        return found.group(1)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _verify(fs: Any, root: str, shards: list[Shard], output_dir: str) -> int:
    """Every planned part is there and no id repeats; the number of rows."""
    missing = [part_name(s.number) for s in shards if not part_exists(fs, root, s.number)]
    if missing:
        raise WorkerError(
            f"{len(missing)} shard(s) were not written ({', '.join(missing[:3])}); run again to finish them"
        )
    ids = pa.chunked_array(
        [
            pq.read_table(posixpath.join(root, part_name(s.number)), columns=["id"], filesystem=fs).column(
                "id"
            )
            for s in shards
        ],
        type=pa.string(),
    )
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))[0].as_py()
        raise DataFormatError(
            f"id {repeated['values']!r} appears {repeated['counts']} times in the input; ids must be unique",
            output_dir,
        )
    return len(ids)


def _remove_temporary(fs: Any, root: str) -> None:
    # parts abandoned by workers that died before their rename
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        if entry.base_name.startswith(f".{PART_PREFIX}") and entry.base_name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                fs.delete_file(entry.path)


def build_search_index(embedder: Any, output_dir: str, *, filesystem: Any = None) -> Any:
    """A ``SearchIndex`` from ``encode_with_ray``'s parts, with the documents read again from the input.

    Example:
        >>> encode_with_ray(model, "corpus.jsonl", "emb/")   # doctest: +SKIP
        >>> index = build_search_index(model, "emb/"); index.save("my-index")   # doctest: +SKIP
    """
    from bgekit.index.search_index import SearchIndex, model_identity

    fs, root = resolve_filesystem(output_dir, filesystem)
    manifest = load_manifest(fs, root)
    if manifest is None:
        raise DataFormatError(f"no {MANIFEST_FILE}: not an encode_with_ray output folder", output_dir)
    if manifest["fields"].get("queries"):
        raise ConfigError(f"{output_dir!r} holds encoded queries, not a corpus to index")
    identity = model_identity(embedder)
    if identity and manifest.get("model_identity") and identity != manifest["model_identity"]:
        raise ConfigError(
            f"{output_dir!r} was encoded with another model or other settings ({manifest.get('model')!r})"
        )
    encoded = read_shards(output_dir, filesystem=filesystem, columns=["dense", "sparse"])
    fields = TextFields(**manifest["fields"])
    input_fs = resolve_filesystem(manifest["input_uri"], filesystem)[0]
    ids: list[str] = []
    documents: list[dict[str, str]] = []
    for row in manifest["shards"]:
        shard_ids, items = read_shard_rows(input_fs, Shard.from_dict(row), fields)
        ids.extend(shard_ids)
        documents.extend(items)
    if ids != encoded.ids:
        raise DataFormatError("the input changed since it was encoded: encode it again", output_dir)
    name = getattr(embedder, "name_or_path", None)
    info = {
        # as SearchIndex.build records it: a local model by absolute path, so the index loads from anywhere
        "model": os.path.abspath(name) if name and os.path.isdir(name) else name,
        "model_identity": identity,
        "dtype": getattr(embedder, "dtype", None),
        "documents": len(ids),
        "encoded_with": "ray",
    }
    return SearchIndex(embedder, ids, documents, encoded.dense, encoded.sparse, info)
