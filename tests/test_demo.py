"""``make demo``'s entry point: indexes a corpus with the default model and prints each query's hits."""

from __future__ import annotations

import pytest

from bgekit import demo


def test_demo_answers_queries(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    docs = [
        {"id": "panda", "title": "Pandas", "text": "The giant panda is a bear native to China."},
        {"id": "paris", "title": "", "text": "Paris is the capital of France."},
        {"id": "tea", "title": "Tea", "text": "Green tea is made from unoxidised leaves."},
    ]
    monkeypatch.setattr(demo, "find_corpus", lambda: ("three documents", docs))
    assert demo.main(["which bear lives in China?", "capital of France"]) == 0
    out = capsys.readouterr().out
    assert "corpus: three documents (3 documents)" in out and "indexed 3 documents" in out
    first, second = out.split("query: ")[1:]
    assert first.splitlines()[1].split("] ")[1].startswith("panda: Pandas The giant panda")
    assert second.splitlines()[1].split("] ")[1].startswith("paris: Paris is the capital")
