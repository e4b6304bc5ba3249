"""Input files that are not UTF-8: every reader names the file and the line, whatever the format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bgekit.cli.encode import read_texts
from bgekit.errors import DataFormatError
from bgekit.evaluation.datasets import read_corpus, read_qrels_tsv
from bgekit.evaluation.metrics import read_trec_run
from bgekit.finetune.data import load_sources
from bgekit.io import iter_jsonl, read_jsonl

LATIN1 = "caf\xe9".encode("latin-1")  # "café" saved as Latin-1: byte 0xe9 is not UTF-8 here


def write_lines(path: Path, good: str, bad: bytes, *, before: int) -> str:
    """``before`` good lines (``@`` numbered), then one line holding ``bad``, then more good lines."""
    lines = [good.replace("@", str(i)).encode("utf-8") for i in range(before + 4)]
    lines[before] = bad
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


JSONL = '{"_id": "d@", "title": "", "text": "caf\\u00e9", "query": "q", "pos": ["p"], "neg": ["n"]}'
BAD_JSONL = (
    b'{"_id": "bad", "title": "", "text": "' + LATIN1 + b'", "query": "q", "pos": ["p"], "neg": ["n"]}'
)
READERS: list[tuple[str, Callable[[str], Any], str, bytes]] = [
    ("iter_jsonl", read_jsonl, JSONL, BAD_JSONL),
    ("corpus", read_corpus, JSONL, BAD_JSONL),
    ("training data", lambda p: load_sources(p, train_group_size=2), JSONL, BAD_JSONL),
    ("qrels", read_qrels_tsv, "q1\td1\t1", b"q1\t" + LATIN1 + b"\t1"),
    ("trec run", read_trec_run, "q1 Q0 d1 1 0.5 run", b"q1 Q0 " + LATIN1 + b" 2 0.4 run"),
    ("encode --input .txt", lambda p: read_texts(p, False), "a text", LATIN1),
]


@pytest.mark.parametrize(("what", "reader", "good", "bad"), READERS, ids=[r[0] for r in READERS])
@pytest.mark.parametrize("before", [2, 3000])  # far past the decoder's first block too
def test_invalid_utf8_names_file_and_line(
    tmp_path: Path, what: str, reader: Callable[[str], Any], good: str, bad: bytes, before: int
) -> None:
    suffix = ".txt" if what.startswith("encode") else ".tsv" if what in ("qrels", "trec run") else ".jsonl"
    path = write_lines(tmp_path / f"input{suffix}", good, bad, before=before)
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        reader(path)
    assert str(info.value).startswith(f"{path}:{before + 1}: ")
    assert "0xe9" in str(info.value)


def test_valid_files_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(JSONL + "\n\n" + JSONL.replace("@", "2") + "\n", encoding="utf-8")
    assert [n for n, _ in iter_jsonl(str(path))] == [1, 3]
