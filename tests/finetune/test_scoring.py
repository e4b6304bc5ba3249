"""Teacher scores: pos_scores / neg_scores from a reranker, aligned with the passages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgekit.errors import DataFormatError, InputError
from bgekit.finetune.data import load_sources
from bgekit.finetune.scoring import score_file, score_rows


class LengthScorer:
    def __init__(self) -> None:
        self.calls = 0

    def compute_score(self, sentence_pairs: list[tuple[str, str]], **kwargs: object) -> list[float]:
        self.calls += 1
        return [float(len(q) + len(p)) for q, p in sentence_pairs]


def test_scores_align_with_passages(tmp_path: Path) -> None:
    rows = [
        {"query": "qq", "pos": ["a", "bbb"], "neg": ["cc"]},
        {"query": "q", "pos": ["dddd"], "neg": ["e", "ff"]},
    ]
    scorer = LengthScorer()
    scored = score_rows(scorer, rows, lines_per_call=1)
    assert scored[0]["pos_scores"] == [3.0, 5.0] and scored[0]["neg_scores"] == [4.0]
    assert scored[1]["pos_scores"] == [5.0] and scored[1]["neg_scores"] == [2.0, 3.0]
    assert scorer.calls == 2 and "pos_scores" not in rows[0]


def test_score_file_output_trains_with_distillation(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}) + "\n")
    out = tmp_path / "out.jsonl"
    assert score_file(LengthScorer(), str(src), str(out)) == 1
    assert load_sources(str(out), knowledge_distillation=True, train_group_size=3)[0].rows[0][
        "neg_scores"
    ] == [3.0, 3.0]


def test_bad_input_and_bad_scorer(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n" + json.dumps({"query": "q"}) + "\n")
    with pytest.raises(DataFormatError, match="in.jsonl:2: missing field 'pos'"):
        score_file(LengthScorer(), str(src), str(tmp_path / "o.jsonl"))

    class Short:
        def compute_score(self, sentence_pairs: object, **kwargs: object) -> list[float]:
            return [1.0]

    with pytest.raises(InputError, match="returned 1 scores for 2 pairs"):
        score_rows(Short(), [{"query": "q", "pos": ["p"], "neg": ["n"]}])
