"""Reading JSONL and corpus files with errors that name file and line, and writing outputs atomically."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import numpy as np

from bgekit.errors import DataFormatError


def iter_text_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file; bytes that are not UTF-8 name file and line.

    Example:
        >>> for line_no, line in iter_text_lines("qrels.tsv"): ...   # doctest: +SKIP
    """
    line_no = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                yield line_no, line
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc, line_no + 1) from exc


def _utf8_error(path: str, exc: UnicodeDecodeError, near_line: int) -> DataFormatError:
    # the decoder works on blocks, so its offset is not a line: find the first line that does not decode
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = raw[bad.start : bad.start + 1].hex()
                return DataFormatError(
                    f"not valid UTF-8 (byte 0x{byte} at column {bad.start + 1}); save the file as UTF-8",
                    path,
                    line_no,
                )
    return DataFormatError(f"not valid UTF-8 ({exc.reason}); save the file as UTF-8", path, near_line)


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; a malformed line names file and line.

    Example:
        >>> for line_no, row in iter_jsonl("corpus.jsonl"): ...   # doctest: +SKIP
    """
    if not os.path.isfile(path):
        raise DataFormatError("file not found", path)
    for line_no, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"invalid JSON ({exc.msg} at column {exc.colno})", path, line_no) from exc


def read_jsonl(path: str) -> list[Any]:
    """All objects of a JSONL file (see ``iter_jsonl``)."""
    return [row for _, row in iter_jsonl(path)]


def string_field(row: Any, keys: tuple[str, ...], path: str, line: int, what: str) -> str:
    """The first of ``keys`` in a JSONL ``row`` as a string (a numeric id is accepted as its text), or a
    DataFormatError naming file, line and field."""
    if not isinstance(row, Mapping):
        raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, line)
    for key in keys:
        if key in row:
            value = row[key]
            if isinstance(value, int | float) and not isinstance(value, bool) and what == "id":
                return str(value)
            if not isinstance(value, str):
                raise DataFormatError(
                    f"field {key!r} is {type(value).__name__}; expected a string", path, line
                )
            return value
    raise DataFormatError(f"missing field {' or '.join(repr(k) for k in keys)}", path, line)


def read_corpus(path: str) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title", "text"}}`` from a corpus JSONL (``_id`` or ``id``; ``title`` optional)."""
    corpus: dict[str, dict[str, str]] = {}
    for line_no, row in iter_jsonl(path):
        doc_id = string_field(row, ("_id", "id"), path, line_no, "id")
        text = string_field(row, ("text",), path, line_no, "text")
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise DataFormatError(
                f"field 'title' is {type(title).__name__}; expected a string", path, line_no
            )
        if doc_id in corpus:
            raise DataFormatError(f"duplicate document id {doc_id!r}", path, line_no)
        corpus[doc_id] = {"title": title, "text": text}
    return corpus


def read_queries(path: str) -> dict[str, str]:
    """``{query_id: text}`` from a queries JSONL (``_id`` or ``id``, and ``text``)."""
    queries: dict[str, str] = {}
    for line_no, row in iter_jsonl(path):
        query_id = string_field(row, ("_id", "id"), path, line_no, "id")
        if query_id in queries:
            raise DataFormatError(f"duplicate query id {query_id!r}", path, line_no)
        queries[query_id] = string_field(row, ("text",), path, line_no, "text")
    return queries


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` only if the block succeeds.

    The one atomic write of bgekit: the finished file is flushed to disk, renamed into place and the
    folder synced, so a crash or power cut leaves the old file or the new one, never half of one. The
    temporary name starts with a dot and ends in ``.tmp``; it is removed when the block fails.

    Example:
        >>> with atomic_path("weights.pt") as tmp: torch.save(state, tmp)   # doctest: +SKIP
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a fresh unique name rather than mkstemp, so the file gets the umask's permissions like any other
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)  # the rename itself survives a power cut only once the folder is synced
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds
    (see ``atomic_path``).

    Example:
        >>> with atomic_open("out.jsonl") as f: f.write("{}\\n")   # doctest: +SKIP
    """
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def replace_folder(staged: str, target: str, *, aside: str | None = None) -> None:
    """Rename the complete folder ``staged`` over ``target`` (created or replaced), after flushing it.

    An existing ``target`` is first moved to ``aside`` (default: a fresh hidden folder beside it) and
    removed once the new one is in place, so a crash leaves the old folder or the new one, and a crash
    between the two renames leaves both complete for the caller to recover (``SearchIndex.load`` does).

    Example:
        >>> replace_folder("out.staged", "out")   # doctest: +SKIP
    """
    fsync_tree(staged)
    parent = os.path.dirname(os.path.abspath(target))
    if os.path.exists(target):
        trash = None
        if aside is None:
            trash = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.old.")
            aside = os.path.join(trash, "old")
        os.replace(target, aside)
        os.replace(staged, target)
        fsync_dir(parent)
        shutil.rmtree(trash or aside, ignore_errors=True)
    else:
        os.replace(staged, target)
    fsync_dir(parent)


def fsync_dir(folder: str) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened.

    Example:
        >>> fsync_dir(".")
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """Flush every file and folder under ``folder`` to disk, before it is renamed into place.

    Example:
        >>> fsync_tree(".")   # doctest: +SKIP
    """
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


def write_jsonl_atomic(path: str, rows: Any) -> None:
    """Write rows as JSONL atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)
