"""Metrics against their definitions written out by hand, and against pytrec_eval directly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.evaluation.metrics import (
    compute_metrics,
    metric_names,
    mrr_at_k,
    ranked,
    read_trec_run,
    truncate_run,
    write_trec_run,
)

K_VALUES = (1, 2, 3, 5, 10)


# ----------------------------------------------------------------- the definitions, written out
def reference_order(docs: dict[str, float]) -> list[str]:
    """trec_eval's ranking: score descending, ties by document id descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda item: (-item[1], _Desc(item[0])))]


class _Desc:
    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def reference_scores(judged: dict[str, int], docs: dict[str, float], k: int) -> dict[str, float]:
    order = reference_order(docs)[:k]
    relevant = {d for d, r in judged.items() if r > 0}
    hits = [d in relevant for d in order]
    num_rel = len(relevant)
    dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(order))
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    precisions = [sum(hits[: i + 1]) / (i + 1) for i, hit in enumerate(hits) if hit]
    first = next((i for i, hit in enumerate(hits) if hit), None)
    return {
        f"ndcg_at_{k}": dcg / idcg if idcg else 0.0,
        f"map_at_{k}": sum(precisions) / num_rel if num_rel else 0.0,
        f"recall_at_{k}": sum(hits) / num_rel if num_rel else 0.0,
        f"precision_at_{k}": sum(hits) / k,
        f"mrr_at_{k}": 1.0 / (first + 1) if first is not None else 0.0,
    }


# ----------------------------------------------------------------------------- generators
doc_ids = st.sampled_from([f"d{i}" for i in range(12)])
# few distinct scores, so ties are frequent
scores = st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.75, 1.0, -0.5])
qrels_strategy = st.dictionaries(
    st.sampled_from(["q1", "q2", "q3", "q4"]),
    st.dictionaries(doc_ids, st.integers(min_value=0, max_value=3), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
)
# documents may be missing from the corpus/run; queries may be missing from qrels or run
run_strategy = st.dictionaries(
    st.sampled_from(["q1", "q2", "q3", "q4", "q5"]),
    st.dictionaries(doc_ids, scores, min_size=1, max_size=10),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(qrels=qrels_strategy, run=run_strategy)
def test_metrics_match_their_definitions(qrels: dict, run: dict) -> None:
    means, per_query = compute_metrics(qrels, run, K_VALUES, per_query=True)
    assert per_query is not None
    evaluated = sorted(set(qrels) & set(run))
    assert sorted(per_query) == evaluated
    for query_id in evaluated:
        for k in K_VALUES:
            expected = reference_scores(qrels[query_id], run[query_id], k)
            for name, value in expected.items():
                assert per_query[query_id][name] == pytest.approx(value, abs=1e-9), (query_id, name)
    for name in metric_names(K_VALUES):
        expected_mean = sum(per_query[q][name] for q in evaluated) / len(evaluated) if evaluated else 0.0
        assert means[name] == pytest.approx(expected_mean, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(qrels=qrels_strategy, run=run_strategy)
def test_means_equal_pytrec_eval_and_mrr_equals_recip_rank_of_the_cut_run(qrels: dict, run: dict) -> None:
    import pytrec_eval

    means, _ = compute_metrics(qrels, run, K_VALUES)
    raw = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.1,2,3,5,10", "map_cut.1,2,3,5,10", "recall.1,2,3,5,10", "P.1,2,3,5,10"}
    ).evaluate(run)
    if not raw:
        return
    for ours, theirs in [("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P")]:
        for k in K_VALUES:
            expected = sum(v[f"{theirs}_{k}"] for v in raw.values()) / len(raw)
            assert means[f"{ours}_at_{k}"] == pytest.approx(expected, abs=1e-12)
    for k in K_VALUES:
        cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncate_run(run, k))
        expected = sum(v["recip_rank"] for v in cut.values()) / len(cut)
        assert means[f"mrr_at_{k}"] == pytest.approx(expected, abs=1e-12)


def test_mrr_by_hand() -> None:
    qrels = {"q1": {"a": 1, "z": 0}, "q2": {"x": 2}, "q3": {"nothing-retrieved": 1}}
    run = {
        "q1": {"z": 0.9, "b": 0.8, "a": 0.7},  # first relevant at rank 3 (z is judged non-relevant)
        "q2": {"w": 0.5, "x": 0.5},  # tie: x > w, so x ranks first
        "q3": {"y": 0.1},
    }
    assert mrr_at_k(qrels, run, 10) == {"q1": 1 / 3, "q2": 1.0, "q3": 0.0}
    assert mrr_at_k(qrels, run, 2) == {"q1": 0.0, "q2": 1.0, "q3": 0.0}
    means, _ = compute_metrics(qrels, run, [2, 10])
    assert means["mrr_at_10"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_graded_relevance_changes_ndcg() -> None:
    run = {"q": {"a": 0.9, "b": 0.8}}
    flat, _ = compute_metrics({"q": {"a": 1, "b": 1}}, run, [2])
    graded, _ = compute_metrics({"q": {"a": 1, "b": 3}}, run, [2])
    assert flat["ndcg_at_2"] == pytest.approx(1.0)
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert graded["ndcg_at_2"] == pytest.approx(expected)


def test_ties_are_ranked_by_document_id_descending() -> None:
    assert [d for d, _ in ranked({"d1": 0.5, "d3": 0.5, "d2": 0.9, "d10": 0.5})] == ["d2", "d3", "d10", "d1"]
    # pytrec_eval sees the same order: only d3 relevant, and it is ranked second
    means, _ = compute_metrics({"q": {"d3": 1}}, {"q": {"d1": 0.5, "d3": 0.5, "d2": 0.9}}, [1, 2])
    assert means["precision_at_1"] == 0.0 and means["mrr_at_2"] == 0.5


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="positive integers"):
        compute_metrics({"q": {"d": 1}}, {"q": {"d": 1.0}}, [0])
    with pytest.raises(ConfigError, match="empty"):
        compute_metrics({"q": {"d": 1}}, {"q": {"d": 1.0}}, [])
    with pytest.raises(InputError, match="relevance must be an integer"):
        compute_metrics({"q": {"d": 0.5}}, {"q": {"d": 1.0}}, [1])  # type: ignore[dict-item]
    with pytest.raises(InputError, match="score must be a number"):
        compute_metrics({"q": {"d": 1}}, {"q": {"d": "high"}}, [1])  # type: ignore[dict-item]


def test_trec_run_file_round_trip(tmp_path) -> None:
    run = {"q1": {"d1": 0.5, "d2": 0.5, "d3": 0.123456789012345}, "q2": {"x": -1.0}}
    path = str(tmp_path / "run.trec")
    write_trec_run(path, run, tag="mine")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.5 mine"
    assert lines[1] == "q1 Q0 d1 2 0.5 mine"
    assert lines[2].split()[2:4] == ["d3", "3"]
    assert read_trec_run(path) == run
    with pytest.raises(InputError, match="whitespace"):
        write_trec_run(str(tmp_path / "bad.trec"), {"q 1": {"d": 1.0}})
    (tmp_path / "broken.trec").write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2\n")
    with pytest.raises(DataFormatError, match=r"broken.trec:2"):
        read_trec_run(str(tmp_path / "broken.trec"))
