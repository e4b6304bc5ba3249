"""Hard-negative mining: rank window, exclusions, margins, reranker filter, cache, CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bgekit.errors import ConfigError, DataFormatError
from bgekit.finetune.mining import MiningOptions, mine_hard_negatives, read_candidates, select_negatives


class AxisEmbedder:
    """Query ``"q"`` is the unit vector e0; passage ``"d{k}"`` scores ``1 - k / 100`` against it."""

    def __init__(self) -> None:
        self.corpus_calls = 0

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        out = np.zeros((len(queries), 2), np.float32)
        out[:, 0] = 1.0
        return out

    def encode_corpus(self, texts: list[str]) -> np.ndarray:
        self.corpus_calls += 1
        scores = np.array([1.0 - int(t[1:]) / 100 for t in texts], np.float32)
        return np.stack([scores, np.sqrt(np.clip(1 - scores**2, 0, None))], axis=1)

    def fingerprint(self) -> str:
        return "axis"


CORPUS = [f"d{k}" for k in range(40)]


def test_rank_window_excludes_positives_and_the_query() -> None:
    rows = [{"query": "q", "pos": ["d3"], "neg": []}]
    opts = MiningOptions(range_start=2, range_end=10, negatives=20)
    mined = mine_hard_negatives(AxisEmbedder(), rows, CORPUS, opts)[0]["neg"]
    # ranks 2..9 are d2..d9; the positive d3 is excluded
    assert sorted(mined, key=lambda t: int(t[1:])) == ["d2", "d4", "d5", "d6", "d7", "d8", "d9"]


def test_negatives_are_sampled_from_the_window() -> None:
    rows = [{"query": "q", "pos": ["d0"]}]
    mined = mine_hard_negatives(
        AxisEmbedder(), rows, CORPUS, MiningOptions(range_start=1, range_end=30, negatives=5)
    )
    negs = mined[0]["neg"]
    assert len(negs) == 5 and len(set(negs)) == 5 and all(1 <= int(t[1:]) < 30 for t in negs)
    assert "neg_scores" not in mined[0]


def test_margins_drop_candidates_close_to_the_positive() -> None:
    rows = [{"query": "q", "pos": ["d5"]}]  # positive scores 0.95
    absolute = MiningOptions(range_start=0, range_end=40, negatives=40, absolute_margin=0.105)
    negs = mine_hard_negatives(AxisEmbedder(), rows, CORPUS, absolute)[0]["neg"]
    assert min(int(t[1:]) for t in negs) == 16  # scores <= 0.845
    relative = MiningOptions(range_start=0, range_end=40, negatives=40, relative_margin=0.21)
    negs = mine_hard_negatives(AxisEmbedder(), rows, CORPUS, relative)[0]["neg"]
    assert min(int(t[1:]) for t in negs) == 25  # scores <= 0.95 * 0.79 = 0.7505


def test_reranker_filter_drops_likely_false_negatives() -> None:
    class Reranker:
        def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
            return [1.0 if int(p[1:]) % 2 == 0 else 0.0 for _, p in pairs]

    rows = [{"query": "q", "pos": ["d0"]}]
    opts = MiningOptions(range_start=0, range_end=20, negatives=5, max_reranker_score=0.5)
    negs = mine_hard_negatives(AxisEmbedder(), rows, CORPUS, opts, reranker=Reranker())[0]["neg"]
    assert len(negs) == 5 and all(int(t[1:]) % 2 == 1 for t in negs)


def test_corpus_embeddings_are_cached(tmp_path: Path) -> None:
    rows = [{"query": "q", "pos": ["d0"]}]
    first, second = AxisEmbedder(), AxisEmbedder()
    opts = MiningOptions(range_start=0, range_end=10, negatives=3, corpus_chunk_size=16)
    a = mine_hard_negatives(first, rows, CORPUS, opts, cache_dir=str(tmp_path))
    b = mine_hard_negatives(second, rows, CORPUS, opts, cache_dir=str(tmp_path))
    assert first.corpus_calls == 3 and second.corpus_calls == 0 and a == b
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_without_corpus_candidates_come_from_the_rows() -> None:
    rows = [{"query": "q", "pos": ["d1"], "neg": ["d2", "d3"]}, {"query": "q", "pos": ["d4"], "neg": ["d5"]}]
    mined = mine_hard_negatives(
        AxisEmbedder(), rows, None, MiningOptions(range_start=0, range_end=10, negatives=9)
    )
    assert sorted(mined[0]["neg"]) == ["d2", "d3", "d4", "d5"]


def test_select_negatives_deduplicates() -> None:
    opts = MiningOptions(range_start=0, range_end=5, negatives=5)
    negs = select_negatives(
        [(0, 0.9), (1, 0.8), (2, 0.7)], set(), "q", ["a", "a", "b"], None, opts, random.Random(0)
    )
    assert sorted(negs) == ["a", "b"]


def test_bad_options_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="range"):
        MiningOptions.from_range("210-10")
    with pytest.raises(ConfigError, match="START-END"):
        MiningOptions.from_range("10:20")
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "x"}\n')
    with pytest.raises(DataFormatError, match="corpus.jsonl:2"):
        read_candidates(str(bad))
