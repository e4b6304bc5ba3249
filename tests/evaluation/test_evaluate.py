"""``evaluate`` end to end on a small real SciFact subset with a tiny model: cache, reports, reranking."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bgekit import Embedder
from bgekit.errors import ConfigError, DataFormatError
from bgekit.evaluation import evaluate, load_dataset
from bgekit.evaluation.metrics import compute_metrics, read_trec_run


class CountingEmbedder:
    """Wraps an Embedder and counts the texts it encodes (so tests can see the cache at work)."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.settings = embedder.settings
        self.name_or_path = "tiny-bert"
        self.corpus_texts = 0
        self.query_texts = 0

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def encode_corpus(self, corpus: list, **kwargs: Any):
        self.corpus_texts += len(corpus)
        return self.inner.encode_corpus(corpus, **kwargs)

    def encode_queries(self, queries: list[str], **kwargs: Any):
        self.query_texts += len(queries)
        return self.inner.encode_queries(queries, **kwargs)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: str) -> Embedder:
    return Embedder(tiny_bert_dir, pooling="mean", device="cpu", show_progress=False)


def test_scores_files_and_config(tiny: Embedder, mini_scifact: str, tmp_path: Path) -> None:
    model = CountingEmbedder(tiny)
    result = evaluate(model, mini_scifact, k_values=[1, 10, 100], output_dir=tmp_path, show_progress=False)
    [r] = result.results
    assert (r.dataset, r.split, r.stage, r.num_queries) == ("scifact-mini", "test", "retrieval", 30)
    assert set(r.scores) == {
        f"{m}_at_{k}" for m in ("ndcg", "map", "recall", "precision", "mrr") for k in (1, 10, 100)
    }
    assert r.main_score == r.scores["ndcg_at_10"] and 0 < r.main_score < 1
    # the run file is the ranking that was scored
    assert r.run_file is not None and os.path.isfile(r.run_file)
    run = read_trec_run(r.run_file)
    assert compute_metrics(load_dataset(mini_scifact).qrels, run, [1, 10, 100])[0] == r.scores
    # reports
    assert set(result.files) == {"markdown", "json", "plot"}
    table = Path(result.files["markdown"]).read_text()
    assert table.splitlines()[0] == (
        "| model | dataset | split | stage | main score | recall_at_100 | mrr_at_10 | map_at_10 |"
    )
    assert f"ndcg_at_10 **{100 * r.main_score:.2f}**" in table
    report = json.loads(Path(result.files["json"]).read_text())
    assert report["results"][0]["scores"] == r.scores
    config = report["config"]
    assert config["models"][0]["fingerprint"] == tiny.fingerprint()
    assert config["models"][0]["settings"]["pooling"] == "mean"
    assert config["models"][0]["settings"]["passage_max_length"] == tiny.settings.passage_max_length
    assert config["k_values"] == [1, 10, 100] and config["datasets"][0]["documents"] == r.num_documents
    assert Path(result.files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_reuse_overwrite_and_invalidation(
    tiny: Embedder, tiny_bert_dir: str, mini_scifact: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    first_model = CountingEmbedder(tiny)
    first = evaluate(first_model, mini_scifact, output_dir=tmp_path, show_progress=False, log=lines.append)
    n_docs = first.results[0].num_documents
    assert first_model.corpus_texts == n_docs and not first.results[0].from_cache

    again_model = CountingEmbedder(tiny)
    lines.clear()
    again = evaluate(again_model, mini_scifact, output_dir=tmp_path, show_progress=False, log=lines.append)
    assert again_model.corpus_texts == 0 and again_model.query_texts == 0
    assert again.results[0].from_cache and again.results[0].scores == first.results[0].scores
    assert any("encoding skipped" in line for line in lines)

    # search results gone but corpus chunks kept: the corpus is not encoded again, queries are
    cache_folder = next(p for p in (tmp_path / "cache").rglob("search-*.json")).parent
    for path in cache_folder.glob("search-*.json"):
        path.unlink()
    partial = CountingEmbedder(tiny)
    assert (
        evaluate(partial, mini_scifact, output_dir=tmp_path, show_progress=False).results[0].scores
        == first.results[0].scores
    )
    assert partial.corpus_texts == 0 and partial.query_texts == 30

    redo = CountingEmbedder(tiny)
    evaluate(redo, mini_scifact, output_dir=tmp_path, overwrite=True, show_progress=False)
    assert redo.corpus_texts == n_docs

    # another instruction is another fingerprint: nothing cached is reused
    instructed = CountingEmbedder(
        Embedder(
            tiny_bert_dir,
            pooling="mean",
            query_instruction="Represent this: ",
            device="cpu",
            show_progress=False,
        )
    )
    other = evaluate(instructed, mini_scifact, output_dir=tmp_path, show_progress=False)
    assert instructed.fingerprint() != tiny.fingerprint()
    assert instructed.corpus_texts == n_docs and not other.results[0].from_cache
    assert other.results[0].scores != first.results[0].scores
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_model_by_path_and_several_datasets(tiny_bert_dir: str, mini_scifact: str, tmp_path: Path) -> None:
    # a folder of datasets: every complete set inside is evaluated
    root = Path(mini_scifact).parent
    result = evaluate(
        tiny_bert_dir,
        [str(root)],
        output_dir=tmp_path,
        embedder_kwargs={"pooling": "mean", "device": "cpu"},
        model_name="tiny",
        show_progress=False,
    )
    assert [(r.model, r.dataset) for r in result.results] == [("tiny", "scifact-mini")]
    assert result.config["models"][0]["settings"]["pooling"] == "mean"


class OverlapReranker:
    def __init__(self) -> None:
        self.pairs = 0

    def fingerprint(self) -> str:
        return "overlap-v1"

    def compute_score(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.pairs += len(pairs)
        return [float(len(set(q.lower().split()) & set(p.lower().split()))) for q, p in pairs]


def test_rerank_stage(tiny: Embedder, mini_scifact: str, tmp_path: Path) -> None:
    reranker = OverlapReranker()
    result = evaluate(
        tiny,
        mini_scifact,
        reranker=reranker,
        rerank_top_k=20,
        k_values=[1, 10, 20],
        output_dir=tmp_path,
        show_progress=False,
    )
    retrieval, reranked = result.results
    assert (retrieval.stage, reranked.stage) == ("retrieval", "rerank")
    assert reranker.pairs == 30 * 20
    assert result.get("scifact-mini") is reranked
    # reranking only reorders the top 20: recall@20 cannot change
    assert reranked.scores["recall_at_20"] == pytest.approx(retrieval.scores["recall_at_20"])
    # word overlap beats a random tiny model on SciFact
    assert reranked.scores["ndcg_at_10"] > retrieval.scores["ndcg_at_10"]
    assert len(read_trec_run(reranked.run_file or "")["1"]) == 20
    # a second run reads the reranked results from the cache (the reranker has a fingerprint)
    again = OverlapReranker()
    cached = evaluate(
        tiny,
        mini_scifact,
        reranker=again,
        rerank_top_k=20,
        k_values=[1, 10, 20],
        output_dir=tmp_path,
        show_progress=False,
    )
    assert again.pairs == 0 and cached.results[1].scores == reranked.scores


def test_rerank_with_a_real_bgekit_reranker(
    tiny: Embedder, mini_scifact: str, tmp_path: Path, minilm_tokenizer_dir: str
) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=1,
    )
    folder = tmp_path / "cross-encoder"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = evaluate(
        tiny,
        mini_scifact,
        reranker=str(folder),
        rerank_top_k=5,
        k_values=[1, 5],
        main_score="ndcg_at_5",
        show_progress=False,
    )
    assert [r.stage for r in result.results] == ["retrieval", "rerank"]
    assert result.config["reranker"]["fingerprint"]
    assert result.results[1].scores["recall_at_5"] == pytest.approx(result.results[0].scores["recall_at_5"])


def test_rerank_fusion_weight(tiny: Embedder, mini_scifact: str) -> None:
    """Weight 1 ranks as the reranker alone, weight 0 as retrieval; 0.5 mixes standardised scores."""

    def run(weight: float | None) -> Any:
        return evaluate(
            tiny,
            mini_scifact,
            reranker=OverlapReranker(),
            rerank_top_k=20,
            rerank_fusion_weight=weight,
            k_values=[1, 10, 20],
            show_progress=False,
        )

    alone, only_reranker, only_retrieval, half = run(None), run(1.0), run(0.0), run(0.5)
    assert only_reranker.results[1].scores["ndcg_at_10"] == pytest.approx(
        alone.results[1].scores["ndcg_at_10"]
    )
    assert only_retrieval.results[1].scores["ndcg_at_10"] == pytest.approx(
        alone.results[0].scores["ndcg_at_10"]
    )
    assert half.config["reranker"]["fusion_weight"] == 0.5
    assert half.results[1].scores["recall_at_20"] == pytest.approx(alone.results[0].scores["recall_at_20"])
    with pytest.raises(ConfigError, match="rerank_fusion_weight must be in"):
        run(1.5)


def test_bad_arguments(tiny: Embedder, mini_scifact: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="main_score='ndcg_at_7' is not computed"):
        evaluate(tiny, mini_scifact, main_score="ndcg_at_7")
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(tiny, mini_scifact, metrics=["bleu"])
    with pytest.raises(ConfigError, match="rerank_top_k=200 exceeds search_top_k=100"):
        evaluate(tiny, mini_scifact, reranker=OverlapReranker(), rerank_top_k=200, search_top_k=100)
    with pytest.raises(ConfigError, match="compute_score"):
        evaluate(tiny, mini_scifact, reranker=object())
    with pytest.raises(DataFormatError, match="nosuchset: not a dataset folder nor a known dataset name"):
        evaluate(tiny, "nosuchset")
