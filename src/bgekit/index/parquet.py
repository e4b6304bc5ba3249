"""Reading encoded Parquet shards for an index, a batch at a time, with errors naming the file and column.

A shard has one row per document: ``id`` (string), the dense vector (``dense`` by default, a
``fixed_size_list<float32>`` or a ``list<float>``), optionally ``title`` and ``text``, and optionally BGE-M3
lexical weights, either as ``bgekit.distributed``'s ``sparse`` column (``struct<indices: list<int32>,
values: list<float32>>``) or as two list columns ``sparse_indices`` and ``sparse_values``. The schema's
``bgekit`` metadata (JSON: ``model_identity``, ``dim``, ``vocab_size``), which ``bgekit.distributed`` writes,
is checked where present. pyarrow is needed (``pip install pyarrow``; in bgekit's ``search`` extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from bgekit.errors import ConfigError, DataFormatError

SPARSE_STRUCT = "sparse"
SPARSE_LISTS = ("sparse_indices", "sparse_values")


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with the dev set
        raise ConfigError("reading Parquet shards needs pyarrow: pip install 'bgekit[search]'") from exc
    return pa, pq


def list_shards(shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The Parquet files of a folder (sorted by name; names starting with ``.`` or ``_`` skipped, as
    temporaries and manifests), a single file, or a list of files kept in the order given.

    Example:
        >>> list_shards(["emb/part-000000.parquet"])   # doctest: +SKIP
        ['emb/part-000000.parquet']
    """
    if isinstance(shards, str | os.PathLike):
        path = os.fspath(shards)
        if os.path.isdir(path):
            files = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.endswith(".parquet") and not name.startswith((".", "_"))
            )
            if not files:
                raise DataFormatError("no .parquet files in this folder", path)
            return files
        paths = [path]
    else:
        paths = [os.fspath(p) for p in shards]
        if not paths:
            raise ConfigError("no Parquet shards given")
    for path in paths:
        if not os.path.isfile(path):
            raise DataFormatError("file not found", path)
    return paths


@dataclass
class ShardLayout:
    """What the shards hold, checked file by file before anything is read in bulk."""

    files: list[str]
    rows: list[int]
    dim: int
    has_text: bool
    sparse: str | None
    """``"struct"`` (a ``sparse`` column), ``"lists"`` (``sparse_indices``/``sparse_values``) or None."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The first shard's ``bgekit`` metadata (model_identity, dim, vocab_size), or ``{}``."""

    @property
    def total(self) -> int:
        return sum(self.rows)


def inspect_shards(files: list[str], vector_column: str) -> ShardLayout:
    """Check every shard's columns and vector type against the first one's; the dimension of a plain
    ``list`` vector column is read from its first row.

    Raises:
        DataFormatError: a missing or mistyped column, a dimension or layout that differs between
            shards, or unreadable Parquet, naming the file and column.
    """
    pa, pq = _pyarrow()
    layout: ShardLayout | None = None
    rows: list[int] = []
    for path in files:
        try:
            handle = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataFormatError(f"not a readable Parquet file ({exc})", path) from exc
        schema = handle.schema_arrow
        names = set(schema.names)
        for column in ("id", vector_column):
            if column not in names:
                raise DataFormatError(
                    f"no column {column!r} (columns: {sorted(names)}); a shard needs 'id' and the vector "
                    f"column (vector_column={vector_column!r})",
                    path,
                )
        kind = schema.field(vector_column).type
        if pa.types.is_fixed_size_list(kind):
            dim = kind.list_size
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            first = (
                handle.read_row_group(0, columns=[vector_column]).column(0) if handle.num_row_groups else None
            )
            if first is None or len(first) == 0:
                dim = layout.dim if layout else 0
            else:
                dim = len(first[0].as_py() or [])
        else:
            raise DataFormatError(f"column {vector_column!r} is {kind}, not a list of floats", path)
        if layout is not None and dim and dim != layout.dim:
            raise DataFormatError(
                f"column {vector_column!r} has {dim}-dimensional vectors; {layout.files[0]} has {layout.dim}",
                path,
            )
        sparse = (
            "struct"
            if SPARSE_STRUCT in names and pa.types.is_struct(schema.field(SPARSE_STRUCT).type)
            else "lists"
            if all(name in names for name in SPARSE_LISTS)
            else None
        )
        has_text = "text" in names
        if layout is not None and (sparse, has_text) != (layout.sparse, layout.has_text):
            raise DataFormatError(
                f"columns {sorted(names)} differ from those of {layout.files[0]} (sparse {layout.sparse}, "
                f"text {layout.has_text}): all shards need the same columns",
                path,
            )
        raw = (schema.metadata or {}).get(b"bgekit")
        try:
            meta = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"the schema's 'bgekit' metadata is not JSON ({exc.msg})", path) from exc
        if layout is not None and meta.get("model_identity") != layout.meta.get("model_identity"):
            raise DataFormatError(
                f"encoded by another model than {layout.files[0]} (model_identity "
                f"{meta.get('model_identity')!r} vs {layout.meta.get('model_identity')!r})",
                path,
            )
        if layout is None:
            layout = ShardLayout(files, rows, dim, has_text, sparse, meta)
        rows.append(handle.metadata.num_rows)
    assert layout is not None
    return layout


@dataclass
class ShardBatch:
    """Consecutive rows of one shard."""

    path: str
    ids: list[str]
    dense: np.ndarray
    titles: list[str] | None
    texts: list[str] | None
    sparse_indices: np.ndarray | None = None
    sparse_values: np.ndarray | None = None
    sparse_offsets: np.ndarray | None = None

    def lexical(self, vocab_size: int) -> sp.csr_matrix | None:
        """The batch's lexical weights as a CSR matrix of ``vocab_size`` columns."""
        if self.sparse_indices is None:
            return None
        assert self.sparse_values is not None and self.sparse_offsets is not None
        if len(self.sparse_indices) and int(self.sparse_indices.max()) >= vocab_size:
            raise DataFormatError(
                f"sparse token id {int(self.sparse_indices.max())} is past the embedder's vocabulary "
                f"({vocab_size}): encoded by another model?",
                self.path,
            )
        return sp.csr_matrix(
            (self.sparse_values, self.sparse_indices, self.sparse_offsets), shape=(len(self.ids), vocab_size)
        )


def _offsets_and_values(column: Any, path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if column.null_count:
        raise DataFormatError(f"column {name!r} has {column.null_count} null row(s)", path)
    offsets = np.asarray(column.offsets, dtype=np.int64)
    return offsets - offsets[0], column.flatten().to_numpy(zero_copy_only=False)


def iter_shard_batches(layout: ShardLayout, vector_column: str, batch_rows: int) -> Iterator[ShardBatch]:
    """The shards' rows, ``batch_rows`` at a time, file by file in order (only one batch in memory)."""
    _, pq = _pyarrow()
    columns = ["id", vector_column]
    if layout.has_text:
        columns.append("text")
    if layout.sparse == "struct":
        columns.append(SPARSE_STRUCT)
    elif layout.sparse == "lists":
        columns.extend(SPARSE_LISTS)
    for path in layout.files:
        handle = pq.ParquetFile(path)
        with_title = layout.has_text and "title" in handle.schema_arrow.names
        for batch in handle.iter_batches(
            batch_size=batch_rows, columns=columns + (["title"] if with_title else [])
        ):
            yield _batch(path, batch, vector_column, layout, with_title)


def _batch(path: str, batch: Any, vector_column: str, layout: ShardLayout, with_title: bool) -> ShardBatch:
    ids_column = batch.column("id")
    if ids_column.null_count:
        raise DataFormatError(f"column 'id' has {ids_column.null_count} null row(s)", path)
    ids = [str(v) for v in ids_column.to_pylist()]
    vectors = batch.column(vector_column)
    if vectors.null_count:
        raise DataFormatError(f"column {vector_column!r} has {vectors.null_count} null row(s)", path)
    offsets, flat = (
        _offsets_and_values(vectors, path, vector_column)
        if not hasattr(vectors.type, "list_size")
        else (None, vectors.flatten().to_numpy(zero_copy_only=False))
    )
    if offsets is not None:
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != layout.dim)
        if len(bad):
            raise DataFormatError(
                f"column {vector_column!r}, row of id {ids[bad[0]]!r}: {lengths[bad[0]]} values, "
                f"expected {layout.dim}",
                path,
            )
    dense = np.asarray(flat, dtype=np.float32).reshape(len(ids), layout.dim)
    titles = texts = None
    if layout.has_text:
        texts = ["" if t is None else str(t) for t in batch.column("text").to_pylist()]
        titles = (
            ["" if t is None else str(t) for t in batch.column("title").to_pylist()]
            if with_title
            else [""] * len(ids)
        )
    out = ShardBatch(path, ids, dense, titles, texts)
    if layout.sparse is not None:
        if layout.sparse == "struct":
            column = batch.column(SPARSE_STRUCT)
            if column.null_count:
                raise DataFormatError(f"column 'sparse' has {column.null_count} null row(s)", path)
            indices, values, names = (
                column.field("indices"),
                column.field("values"),
                ("sparse.indices", "sparse.values"),
            )
        else:
            indices, values = batch.column(SPARSE_LISTS[0]), batch.column(SPARSE_LISTS[1])
            names = SPARSE_LISTS
        index_offsets, flat_indices = _offsets_and_values(indices, path, names[0])
        value_offsets, flat_values = _offsets_and_values(values, path, names[1])
        if not np.array_equal(index_offsets, value_offsets):
            raise DataFormatError(f"columns {names[0]!r} and {names[1]!r} differ in length on some row", path)
        out.sparse_indices = np.asarray(flat_indices, dtype=np.int32)
        out.sparse_values = np.asarray(flat_values, dtype=np.float32)
        out.sparse_offsets = index_offsets
    return out
