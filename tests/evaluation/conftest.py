"""Small real datasets for evaluation tests: a SciFact test subset written in BEIR layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgekit.evaluation.datasets import RetrievalDataset, load_dataset, save_dataset


def scifact_subset(scifact_dir: Path, queries: int = 30, extra_docs: int = 120) -> RetrievalDataset:
    """The first ``queries`` SciFact test queries, their relevant documents and ``extra_docs`` others."""
    full = load_dataset(scifact_dir, "test")
    query_ids = list(full.qrels)[:queries]
    qrels = {q: full.qrels[q] for q in query_ids}
    wanted = {d for docs in qrels.values() for d in docs}
    others = [d for d in full.corpus if d not in wanted][:extra_docs]
    corpus = {d: full.corpus[d] for d in full.corpus if d in wanted or d in set(others)}
    return RetrievalDataset("scifact-mini", corpus, {q: full.queries[q] for q in query_ids}, qrels, "test")


@pytest.fixture(scope="session")
def mini_scifact(tmp_path_factory: pytest.TempPathFactory, scifact_dir: Path) -> str:
    """A SciFact subset (30 test queries, ~160 documents) saved as a BEIR folder named scifact-mini."""
    folder = tmp_path_factory.mktemp("data") / "scifact-mini"
    save_dataset(scifact_subset(scifact_dir), str(folder))
    return str(folder)
