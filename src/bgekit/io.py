"""Reading JSONL with errors that name file and line, and writing outputs atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
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


@contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    Example:
        >>> with atomic_open("out.jsonl") as f: f.write("{}\\n")   # doctest: +SKIP
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)  # the rename itself survives a power cut only once the folder is synced
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def write_atomic(path: str, writer: Callable[[IO[Any]], None], mode: str = "w", **kwargs: Any) -> None:
    """Call ``writer(handle)`` on a temporary file, then rename it over ``path``."""
    with atomic_open(path, mode, **kwargs) as handle:
        writer(handle)
