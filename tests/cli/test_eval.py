"""``bgekit eval`` end to end on a small real SciFact subset with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgekit.cli.main import main
from bgekit.evaluation.datasets import load_dataset, save_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, scifact_dir: Path) -> Path:
    """Two small sets (BEIR and FlagEmbedding-custom layout) and one incomplete folder."""
    full = load_dataset(scifact_dir, "test")
    root = tmp_path_factory.mktemp("cli-data")
    for name, layout, offset in (("sci-a", "beir", 0), ("sci-b", "custom", 20)):
        query_ids = list(full.qrels)[offset : offset + 15]
        qrels = {q: full.qrels[q] for q in query_ids}
        judged = {d for docs in qrels.values() for d in docs}
        corpus = {d: full.corpus[d] for d in list(full.corpus)[:60] if d not in judged}
        corpus.update({d: full.corpus[d] for d in judged})
        subset = type(full)(name, corpus, {q: full.queries[q] for q in query_ids}, qrels, "test")
        save_dataset(subset, str(root / name), layout=layout)  # type: ignore[arg-type]
    (root / "no-corpus" / "qrels").mkdir(parents=True)
    return root


def test_eval_command_writes_reports_and_reuses_the_cache(
    tiny_bert_dir: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    argv = [
        "eval",
        "--model",
        tiny_bert_dir,
        "--model-name",
        "tiny",
        "--dataset",
        str(data_root),
        "--k-values",
        "1",
        "10",
        "100",
        "--output-dir",
        str(out),
        "--pooling",
        "mean",
        "--no-progress",
    ]
    assert main(argv) == 0
    first = capsys.readouterr()
    lines = first.out.splitlines()
    assert lines[0].startswith("| model | dataset | split | stage | main score |")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["sci-a", "sci-b"]
    assert first.err.count("1 chunk(s) encoded, 0 read from cache") == 2
    report = json.loads((out / "report.json").read_text())
    assert [r["dataset"] for r in report["results"]] == ["sci-a", "sci-b"]
    assert report["config"]["models"][0]["settings"]["pooling"] == "mean"
    assert (out / "recall_at_k.png").stat().st_size > 1000 and (out / "report.md").is_file()
    assert len(list((out / "runs").glob("*.trec"))) == 2

    assert main([*argv, "--format", "json"]) == 0
    second = capsys.readouterr()
    assert second.err.count("encoding skipped") == 2
    cached = json.loads(second.out)
    assert [r["scores"] for r in cached] == [r["scores"] for r in report["results"]]

    assert main([*argv, "--overwrite"]) == 0
    assert "encoding skipped" not in capsys.readouterr().err


def test_eval_command_errors(tiny_bert_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": }\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (bad / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    assert (
        main(["eval", "--model", tiny_bert_dir, "--dataset", str(bad), "--output-dir", str(tmp_path / "o")])
        == 2
    )
    assert f"{bad}/corpus.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                tiny_bert_dir,
                "--dataset",
                str(tmp_path / "missing"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a dataset folder nor a known dataset name; expected a BEIR folder" in capsys.readouterr().err


def test_eval_command_reranks_with_fusion_and_reranker_options(
    tiny_bert_dir: str, minilm_tokenizer_dir: str, data_root: Path, tmp_path: Path
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
    out = tmp_path / "results"
    argv = [
        "eval", "--model", tiny_bert_dir, "--dataset", str(data_root / "sci-a"), "--k-values", "1", "10",
        "--reranker", str(folder), "--rerank-top-k", "10", "--rerank-fusion-weight", "0.5",
        "--rerank-dtype", "bf16", "--rerank-max-length", "64", "--output-dir", str(out), "--no-progress",
        "--format", "json",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["reranker"]["fusion_weight"] == 0.5
    retrieval, reranked = report["results"]
    assert reranked["stage"] == "rerank"
    # only the top 10 are reordered: recall@10 is the retrieval's
    assert reranked["scores"]["recall_at_10"] == pytest.approx(retrieval["scores"]["recall_at_10"])
