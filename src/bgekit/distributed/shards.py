"""The input plan and the output format of distributed encoding: deterministic shards in, Parquet parts out.

An input (a JSONL or Parquet file, a folder of them, or a list) is cut into shards by row ranges: a JSONL
shard is a range of lines (with its byte range, so a worker reads only its part of the file), a Parquet
shard a range of rows. The plan depends only on the files and ``rows_per_shard``, so a re-run finds the
same shards and skips those already written.

Each shard becomes one Parquet part, ``part-NNNNNN.parquet``, written under a temporary name and renamed,
so a part is either whole or absent. Its columns:

- ``id``: string, the document id (``_id`` or ``id`` of the input; numbers become strings);
- ``dense``: ``fixed_size_list<float32>[dim]``, the dense vector;
- ``sparse`` (BGE-M3): ``struct<indices: list<int32>, values: list<float32>>``, the lexical weights with
  token ids as indices: what Milvus' ``SPARSE_FLOAT_VECTOR`` and Qdrant's ``SparseVector`` take;
- ``colbert`` (BGE-M3, when asked): ``list<fixed_size_list<float32>[colbert_dim]>``, one vector per token.

The schema's ``bgekit`` metadata holds the dimension, vocabulary size and model identity; the output
folder's ``_bgekit_encode.json`` holds the plan and what it was encoded with.

Files are opened through ``pyarrow.fs``, the filesystems Ray Data reads: local paths, ``s3://``,
``gs://``, ``hdfs://`` and any ``pyarrow.fs.FileSystem`` passed in.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bgekit.errors import ConfigError, DataFormatError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - the [ray] extra installs pyarrow
    raise ConfigError("Parquet shards need pyarrow: pip install 'bgekit[ray]'") from exc

FORMAT_VERSION = 1
MANIFEST_FILE = "_bgekit_encode.json"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
DEFAULT_ROWS_PER_SHARD = 10_000
_READ_BLOCK = 1 << 24  # bytes read at a time while counting a JSONL file's lines

InputFormat = Literal["jsonl", "parquet"]
_FORMATS: dict[str, InputFormat] = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class TextFields:
    """Which input fields hold the id, title and text.

    Attributes:
        id_field: the id's field; ``None``: ``_id`` (BEIR), else ``id``.
        text_field: the text's field.
        title_field: an optional title joined before the text as BEIR does; ``None``: no title.
        queries: rows are queries (text only, the query instruction), not passages.

    Example:
        >>> TextFields().id_candidates
        ('_id', 'id')
    """

    id_field: str | None = None
    text_field: str = "text"
    title_field: str | None = "title"
    queries: bool = False

    @property
    def id_candidates(self) -> tuple[str, ...]:
        return (self.id_field,) if self.id_field else ("_id", "id")


@dataclass(frozen=True)
class InputFile:
    """One input file as the plan saw it (size and modification time tell when it changed)."""

    path: str
    format: InputFormat
    size: int
    mtime: float | None


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one input file (lines for JSONL, rows for Parquet), encoded as one part.

    ``offset`` and ``length`` are the JSONL shard's bytes; ``id_column`` the Parquet file's id column.
    """

    number: int
    path: str
    format: InputFormat
    start: int
    stop: int
    offset: int = 0
    length: int = 0
    id_column: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Shard:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def part_name(number: int) -> str:
    """The file name of shard ``number``'s part.

    Example:
        >>> part_name(7)
        'part-000007.parquet'
    """
    return f"{PART_PREFIX}{number:06d}{PART_SUFFIX}"


def resolve_filesystem(uri: str, filesystem: Any = None) -> tuple[Any, str]:
    """``(pyarrow filesystem, path in it)`` for a local path or a URI such as ``s3://bucket/corpus``."""
    if filesystem is not None:
        return filesystem, uri
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ConfigError(f"cannot open {uri!r}: {exc}") from exc


def list_inputs(paths: Sequence[str], fs: Any) -> list[InputFile]:
    """The JSONL/Parquet files named by ``paths`` (folders give their files in name order)."""
    files: list[InputFile] = []
    for path in paths:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataFormatError("file not found", path)
        if info.type == pafs.FileType.Directory:
            entries = sorted(
                (e for e in fs.get_file_info(pafs.FileSelector(path)) if e.type == pafs.FileType.File),
                key=lambda e: e.path,
            )
            found = [
                e for e in entries if not e.base_name.startswith((".", "_")) and _format_of(e.path, False)
            ]
            if not found:
                raise DataFormatError("the folder holds no .jsonl or .parquet file", path)
            files.extend(_input_file(e) for e in found)
        else:
            files.append(_input_file(info))
    return files


def _format_of(path: str, strict: bool = True) -> InputFormat | None:
    extension = posixpath.splitext(path)[1].lower()
    if extension in _FORMATS:
        return _FORMATS[extension]
    if strict:
        raise DataFormatError(
            f"unknown input format {extension or '(no extension)'!r}; expected .jsonl, .json or .parquet",
            path,
        )
    return None


def _input_file(info: Any) -> InputFile:
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return InputFile(info.path, _format_of(info.path) or "jsonl", int(info.size or 0), mtime)


def plan_shards(files: Sequence[InputFile], fs: Any, rows_per_shard: int, fields: TextFields) -> list[Shard]:
    """Cut the files into shards of at most ``rows_per_shard`` rows, checking each file's first row.

    Example:
        >>> plan_shards(list_inputs(["corpus.jsonl"], fs), fs, 10_000, TextFields())   # doctest: +SKIP
    """
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    shards: list[Shard] = []
    for file in files:
        if file.format == "jsonl":
            shards.extend(_plan_jsonl(fs, file.path, rows_per_shard, len(shards), fields))
        else:
            shards.extend(_plan_parquet(fs, file.path, rows_per_shard, len(shards), fields))
    return shards


def _plan_jsonl(fs: Any, path: str, rows: int, first: int, fields: TextFields) -> list[Shard]:
    # byte offsets where each shard's first line begins: count newlines without parsing JSON
    starts, lines, position, head = [0], 0, 0, b""
    with fs.open_input_stream(path) as stream:
        while block := stream.read(_READ_BLOCK):
            if len(head) < 1 << 16:
                head += block[: 1 << 16]
            cursor = 0
            while True:
                needed = len(starts) * rows - lines
                found = block.count(b"\n", cursor)
                if found < needed:
                    lines += found
                    break
                for _ in range(needed):
                    cursor = block.index(b"\n", cursor) + 1
                lines += needed
                starts.append(position + cursor)
            position += len(block)
    _check_first_jsonl_row(head, position <= len(head), path, fields)
    starts.append(position)
    shards: list[Shard] = []
    for number, (begin, end) in enumerate(zip(starts, starts[1:], strict=False)):
        if end > begin:
            shards.append(
                Shard(
                    first + len(shards), path, "jsonl", number * rows, (number + 1) * rows, begin, end - begin
                )
            )
    return shards


def _check_first_jsonl_row(head: bytes, whole: bool, path: str, fields: TextFields) -> None:
    # fail before any worker starts on the common mistakes (wrong file, wrong field names)
    lines = head.split(b"\n")
    for line_no, line in enumerate(lines if whole else lines[:-1], start=1):
        if line.strip():
            row_fields(parse_json_line(line, path, line_no), fields, path, line_no)
            return


def _plan_parquet(fs: Any, path: str, rows: int, first: int, fields: TextFields) -> list[Shard]:
    try:
        with fs.open_input_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            names = metadata.schema.to_arrow_schema().names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(f"not a readable Parquet file ({exc})", path) from exc
    id_column = next((name for name in fields.id_candidates if name in names), None)
    if id_column is None or fields.text_field not in names:
        missing = fields.text_field if id_column is not None else " or ".join(map(repr, fields.id_candidates))
        raise DataFormatError(f"no column {missing} (columns: {', '.join(names)})", path)
    total = metadata.num_rows
    return [
        Shard(first + n, path, "parquet", begin, min(begin + rows, total), id_column=id_column)
        for n, begin in enumerate(range(0, total, rows))
    ]


def parse_json_line(line: bytes, path: str, line_no: int) -> Any:
    try:
        return json.loads(line)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason})", path, line_no) from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"invalid JSON ({exc.msg} at column {exc.colno})", path, line_no) from exc


def row_fields(row: Any, fields: TextFields, path: str, line_no: int) -> tuple[str, str, str]:
    """``(id, title, text)`` of one JSONL row; a missing or mistyped field names file, line and field."""
    if not isinstance(row, dict):
        raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, line_no)
    key = next((k for k in fields.id_candidates if k in row), None)
    if key is None:
        raise DataFormatError(
            f"missing field {' or '.join(map(repr, fields.id_candidates))} (the document id)", path, line_no
        )
    doc_id = row[key]
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    values = {key: doc_id, fields.text_field: row.get(fields.text_field, None)}
    if fields.text_field not in row:
        raise DataFormatError(f"missing field {fields.text_field!r}", path, line_no)
    title = row.get(fields.title_field) if fields.title_field else None
    if title is not None:
        values[str(fields.title_field)] = title
    for name, value in values.items():
        if not isinstance(value, str):
            raise DataFormatError(
                f"field {name!r} is {type(value).__name__}; expected a string", path, line_no
            )
    return doc_id, title or "", values[fields.text_field]


def read_shard_rows(fs: Any, shard: Shard, fields: TextFields) -> tuple[list[str], list[Any]]:
    """The ids and encoder inputs (``{"title", "text"}`` dicts, or strings for queries) of one shard."""
    if shard.format == "jsonl":
        rows = _read_jsonl_rows(fs, shard, fields)
    else:
        rows = _read_parquet_rows(fs, shard, fields)
    ids = [doc_id for doc_id, _, _ in rows]
    if fields.queries:
        return ids, [text for _, _, text in rows]
    return ids, [{"title": title, "text": text} for _, title, text in rows]


def _read_jsonl_rows(fs: Any, shard: Shard, fields: TextFields) -> list[tuple[str, str, str]]:
    with fs.open_input_file(shard.path) as handle:
        handle.seek(shard.offset)
        data = handle.read(shard.length)
    rows = []
    for index, line in enumerate(data.split(b"\n")):
        if line.strip():
            line_no = shard.start + index + 1
            rows.append(row_fields(parse_json_line(line, shard.path, line_no), fields, shard.path, line_no))
    return rows


def _read_parquet_rows(fs: Any, shard: Shard, fields: TextFields) -> list[tuple[str, str, str]]:
    with fs.open_input_file(shard.path) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        columns = [shard.id_column, fields.text_field]
        if fields.title_field and fields.title_field in names:
            columns.append(fields.title_field)
        # the row groups that overlap [start, stop), then the exact rows
        groups, first_row, row = [], None, 0
        for number in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(number).num_rows
            if row < shard.stop and row + size > shard.start:
                groups.append(number)
                first_row = row if first_row is None else first_row
            row += size
        table = parquet.read_row_groups(groups, columns=columns)
    table = table.slice(shard.start - (first_row or 0), shard.stop - shard.start)
    out: list[list[Any]] = []
    for name in columns:
        column = table.column(name)
        if pa.types.is_integer(column.type) and name == shard.id_column:
            column = pc.cast(column, pa.string())
        elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise DataFormatError(f"column {name!r} is {column.type}; expected strings", shard.path)
        values = column.to_pylist()
        if name != fields.title_field and column.null_count:
            position = values.index(None)
            raise DataFormatError(f"row {shard.start + position}: field {name!r} is null", shard.path)
        out.append(values)
    titles = out[2] if len(out) == 3 else [""] * len(out[0])
    return [(i, title or "", text) for i, text, title in zip(out[0], out[1], titles, strict=True)]


def encoded_table(
    ids: Sequence[str],
    dense: np.ndarray | None,
    lexical: sp.csr_matrix | None,
    colbert: Sequence[np.ndarray] | None,
    meta: dict[str, Any],
) -> Any:
    """One part as a ``pyarrow.Table`` with the columns in this module's docstring."""
    columns: dict[str, Any] = {"id": pa.array(list(ids), pa.string())}
    if dense is not None:
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        columns["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1])
    if lexical is not None:
        lexical = lexical.tocsr()
        offsets = pa.array(lexical.indptr.astype(np.int32))
        columns["sparse"] = pa.StructArray.from_arrays(
            [
                pa.ListArray.from_arrays(offsets, pa.array(lexical.indices.astype(np.int32))),
                pa.ListArray.from_arrays(offsets, pa.array(lexical.data.astype(np.float32))),
            ],
            names=["indices", "values"],
        )
    if colbert is not None:
        width = int(meta.get("colbert_dim") or (colbert[0].shape[1] if len(colbert) else 0))
        counts = np.array([len(v) for v in colbert], dtype=np.int32)
        flat = np.concatenate(
            [np.zeros(0, np.float32)] + [np.asarray(v, np.float32).reshape(-1) for v in colbert]
        )
        tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
        columns["colbert"] = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), tokens
        )
    table = pa.table(columns)
    return table.replace_schema_metadata({"bgekit": json.dumps(meta)})


def write_part(fs: Any, folder: str, number: int, table: Any) -> str:
    """Write ``table`` as shard ``number``'s part: a temporary name first, renamed when complete."""
    final = posixpath.join(folder, part_name(number))
    temporary = posixpath.join(folder, f".{part_name(number)}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
        fs.move(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(temporary)
        raise
    return final


def part_exists(fs: Any, folder: str, number: int) -> bool:
    return fs.get_file_info(posixpath.join(folder, part_name(number))).type == pafs.FileType.File


def load_manifest(fs: Any, folder: str) -> dict[str, Any] | None:
    path = posixpath.join(folder, MANIFEST_FILE)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"invalid JSON ({exc.msg})", path, exc.lineno) from exc
    return manifest


def save_manifest(fs: Any, folder: str, manifest: dict[str, Any]) -> None:
    path = posixpath.join(folder, MANIFEST_FILE)
    temporary = posixpath.join(folder, f".{MANIFEST_FILE}.{uuid.uuid4().hex}.tmp")
    with fs.open_output_stream(temporary) as stream:
        stream.write(json.dumps(manifest, indent=1).encode())
    fs.move(temporary, path)


@dataclass
class EncodedShards:
    """An encoded corpus read back from its parts, in input order.

    Attributes:
        ids: document ids.
        dense: float32 (n, dim) vectors, or ``None``.
        sparse: float32 CSR lexical weights of shape (n, vocab_size), or ``None``.
        colbert: one (tokens, colbert_dim) array per document, or ``None``.
        meta: the ``bgekit`` metadata of the parts (dim, vocab_size, model_identity...).
    """

    ids: list[str]
    dense: np.ndarray | None
    sparse: sp.csr_matrix | None
    colbert: list[np.ndarray] | None
    meta: dict[str, Any]


def read_shards(
    folder: str, *, filesystem: Any = None, columns: Sequence[str] | None = None
) -> EncodedShards:
    """Read every part written by ``encode_with_ray`` into arrays (checking that none is missing).

    Args:
        folder: the output folder (a local path or a URI).
        filesystem: a ``pyarrow.fs.FileSystem`` to read it through (default: from the URI).
        columns: read only these of ``dense``, ``sparse``, ``colbert`` (default: all there are).

    Example:
        >>> shards = read_shards("emb/")   # doctest: +SKIP
        >>> shards.dense.shape, shards.sparse.shape   # doctest: +SKIP
        ((5183, 1024), (5183, 250002))
    """
    fs, root = resolve_filesystem(folder, filesystem)
    manifest = load_manifest(fs, root)
    if manifest is None:
        raise DataFormatError(f"no {MANIFEST_FILE}: not an encode_with_ray output folder", folder)
    numbers = [shard["number"] for shard in manifest["shards"]]
    missing = [part_name(n) for n in numbers if not part_exists(fs, root, n)]
    if missing:
        raise DataFormatError(
            f"{len(missing)} of {len(numbers)} parts are missing ({', '.join(missing[:3])}...): "
            "run the same encode again to finish them",
            folder,
        )
    tables = [pq.read_table(posixpath.join(root, part_name(n)), filesystem=fs) for n in numbers]
    meta = json.loads((tables[0].schema.metadata or {}).get(b"bgekit", b"{}")) if tables else {}
    table = pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], pa.string())})
    wanted = set(columns) if columns is not None else {"dense", "sparse", "colbert"}
    dense = sparse = colbert = None
    if "dense" in wanted and "dense" in table.column_names:
        column = table.column("dense").combine_chunks()
        dense = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
    if "sparse" in wanted and "sparse" in table.column_names:
        sparse = sparse_matrix(table.column("sparse"), int(meta.get("vocab_size") or 0))
    if "colbert" in wanted and "colbert" in table.column_names:
        column = table.column("colbert").combine_chunks()
        offsets = np.asarray(column.offsets) - int(column.offsets[0].as_py())
        flat = column.flatten().flatten().to_numpy().reshape(-1, column.type.value_type.list_size)
        colbert = [flat[offsets[i] : offsets[i + 1]] for i in range(len(table))]
    return EncodedShards(table.column("id").to_pylist(), dense, sparse, colbert, meta)


def sparse_matrix(column: Any, vocab_size: int = 0) -> sp.csr_matrix:
    """A ``sparse`` column (``struct<indices, values>``) as a float32 CSR matrix (``vocab_size`` columns)."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    indices, values = column.field("indices"), column.field("values")
    offsets = np.asarray(indices.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    flat_indices = indices.flatten().to_numpy().astype(np.int32)
    width = max(vocab_size, int(flat_indices.max()) + 1 if len(flat_indices) else 0)
    return sp.csr_matrix(
        (values.flatten().to_numpy().astype(np.float32), flat_indices, offsets), shape=(len(column), width)
    )
