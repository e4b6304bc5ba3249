"""``bgekit rerank``: JSONL pairs in, JSONL scores out (atomically), errors naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgekit import Reranker
from bgekit.cli.main import main

ROWS = [
    {"qid": "1", "query": "what is a panda?", "passage": "The giant panda is a bear."},
    {"qid": "1", "query": "what is a panda?", "passage": {"title": "Pandas", "text": "A Python library."}},
    {"qid": "2", "query": "how do vaccines work?", "passage": "They train the immune system."},
]


def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_rerank_cli_scores_every_line(tmp_path: Path, bert_reranker_dir: str) -> None:
    pairs_file, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(pairs_file, ROWS)
    code = main(
        [
            "rerank",
            "--model",
            bert_reranker_dir,
            "--input",
            str(pairs_file),
            "--output",
            str(out),
            "--normalize",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Reranker(bert_reranker_dir, device="cpu", normalize=True).compute_score(
        [
            ("what is a panda?", "The giant panda is a bear."),
            ("what is a panda?", "Pandas A Python library."),
            ("how do vaccines work?", "They train the immune system."),
        ]
    )
    assert [row["qid"] for row in lines] == ["1", "1", "2"]
    assert [row["score"] for row in lines] == pytest.approx(expected, abs=1e-6)
    assert all(0 < row["score"] < 1 for row in lines)


def test_rerank_cli_per_layer_scores(tmp_path: Path, llama_reranker_dir: str) -> None:
    pairs_file, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(pairs_file, ROWS[:2])
    args = ["rerank", "--model", llama_reranker_dir, "--input", str(pairs_file), "--output", str(out)]
    assert main([*args, "--cutoff-layers", "1", "3", "--max-length", "64"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(row["scores"]) == 2 for row in lines)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q"}', "field 'passage' is missing"),
        ('{"query": 3, "passage": "p"}', "field 'query'"),
        ('["q", "p"]', "expected a JSON object"),
        ('{"query": "q", "passage": {"title": "t"}}', "without a string 'text'"),
        ("{not json", "invalid JSON"),
    ],
)
def test_rerank_cli_bad_line_names_file_and_line(
    tmp_path: Path, bert_reranker_dir: str, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    pairs_file, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    pairs_file.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n", encoding="utf-8")
    code = main(["rerank", "--model", bert_reranker_dir, "--input", str(pairs_file), "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{pairs_file}:3:" in err and message in err
    assert not out.exists()


def test_rerank_cli_keeps_old_output_when_scoring_fails(tmp_path: Path, bert_reranker_dir: str) -> None:
    pairs_file, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(pairs_file, ROWS)
    out.write_text("previous\n")
    code = main(
        [
            "rerank",
            "--model",
            bert_reranker_dir,
            "--input",
            str(pairs_file),
            "--output",
            str(out),
            "--max-length",
            "64",
            "--query-max-length",
            "63",
        ]
    )
    assert code == 2
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".scores")] == []
