"""Dataset descriptors: metadata, local loading, and the hub path (no network here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgekit.errors import ConfigError
from bgekit.evaluation.descriptors import DESCRIPTORS, descriptors_in, get_descriptor, known_descriptor_names
from bgekit.evaluation.metrics import metric_names

ALL_K = (1, 3, 5, 10, 20, 100, 1000)


def test_collections_are_covered() -> None:
    collections = {d.collection for d in DESCRIPTORS.values()}
    assert {"beir", "msmarco", "miracl", "mldr", "mkqa", "air-bench", "mteb"} <= collections
    assert len(descriptors_in("beir")) >= 18
    assert [d.name for d in descriptors_in("msmarco")] == ["msmarco-dev", "msmarco-dl19", "msmarco-dl20"]
    for d in DESCRIPTORS.values():
        assert d.main_score in metric_names(ALL_K), d.name
        assert d.splits and d.source and d.reference
    assert get_descriptor("ArguAna").ignore_identical_ids and get_descriptor("quora").ignore_identical_ids
    assert get_descriptor("msmarco-dev").main_score == "mrr_at_10"
    with pytest.raises(ConfigError, match="unknown dataset 'scifakt'; known datasets: .*scifact"):
        get_descriptor("scifakt")
    assert known_descriptor_names() == sorted(known_descriptor_names())


def test_load_from_a_local_folder(scifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = get_descriptor("scifact").load(split="test", local_dir=scifact_dir)
    assert (ds.name, len(ds.queries)) == ("scifact", 300)
    monkeypatch.setenv("BGEKIT_DATA_DIR", str(scifact_dir.parent))
    assert len(get_descriptor("scifact").load(split="train").queries) == 809
    with pytest.raises(ConfigError, match="scifact has no split 'dev'"):
        get_descriptor("scifact").load(split="dev")


def test_hub_needs_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BGEKIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set, so mteb/fiqa cannot be downloaded"):
        get_descriptor("fiqa").load()
    with pytest.raises(ConfigError, match="no hub loader for irds/msmarco-passage_trec-dl-2019_judged"):
        get_descriptor("msmarco-dl19").load()


def test_hub_loader_reads_the_mteb_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The hub path with ``datasets.load_dataset`` answering from memory (the layout of mteb/<name>)."""
    import datasets

    tables = {
        ("mteb/nfcorpus", "corpus"): [
            {"_id": "d1", "title": "T", "text": "x"},
            {"_id": "d2", "title": "", "text": "y"},
        ],
        ("mteb/nfcorpus", "queries"): [{"_id": "q1", "text": "query"}, {"_id": "q2", "text": "unjudged"}],
        ("mteb/nfcorpus", "default"): [{"query-id": "q1", "corpus-id": "d1", "score": 2}],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(tables[(path, name)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("BGEKIT_DATA_DIR", str(tmp_path))
    ds = get_descriptor("nfcorpus").load(split="test")
    assert calls[-1] == ("mteb/nfcorpus", "default", "test")
    assert ds.corpus == {"d1": {"title": "T", "text": "x"}, "d2": {"title": "", "text": "y"}}
    assert ds.queries == {"q1": "query"} and ds.qrels == {"q1": {"d1": 2}}
