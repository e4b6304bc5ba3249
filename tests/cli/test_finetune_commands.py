"""The fine-tuning commands end to end: ``bgekit mine``, ``score``, ``merge`` and ``finetune``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bgekit.cli.main import main as cli_main


def test_mine_cli_on_a_real_model(tiny_bert_dir: str, tmp_path: Path) -> None:
    from bgekit.cli.main import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"title": f"t{i}", "text": f"document number {i}"}) + "\n" for i in range(30))
    )
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "document", "pos": ["t1 document number 1"], "neg": []}) + "\n")
    out = tmp_path / "mined.jsonl"
    code = main([
        "mine", "--model", tiny_bert_dir, "--input", str(train), "--corpus", str(corpus), "--output", str(out),
        "--range", "0-20", "--negatives", "7", "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert code == 0
    row = json.loads(out.read_text())
    assert len(row["neg"]) == 7 and "t1 document number 1" not in row["neg"]
    assert (
        main(["mine", "--model", tiny_bert_dir, "--input", str(train), "--output", str(out), "--range", "x"])
        == 2
    )


def test_score_cli_with_a_real_reranker(tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    reranker_module = pytest.importorskip("bgekit.inference.reranker")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path / "tiny-reranker"
    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "pos": ["p one"], "neg": ["n one", "n two"]}) + "\n")
    out = tmp_path / "out.jsonl"
    from bgekit.cli.main import main

    assert main(["score", "--reranker", str(folder), "--input", str(src), "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    direct = reranker_module.Reranker(str(folder), device="cpu").compute_score(
        [("q", "p one"), ("q", "n one"), ("q", "n two")]
    )
    assert row["pos_scores"] + row["neg_scores"] == pytest.approx(list(direct), abs=1e-5)


def test_cli_merge(tmp_path: Path, tiny_bert_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = cli_main(
        ["merge", "--models", tiny_bert_dir, tiny_bert_dir, "--weights", "0.5", "0.5", "--output", str(out)]
    )
    assert code == 0
    assert {"model.safetensors", "config.json", "tokenizer.json", "merge_info.json"} <= set(os.listdir(out))
    assert "merged 2 models" in capsys.readouterr().err
    code = cli_main(["merge", "--models", tiny_bert_dir, tiny_bert_dir, "--output", str(out)])
    assert code == 2  # exists: a clear error, not a traceback


def test_cli_forwards_to_the_entry_point(tiny_bert_dir: str, toy_train_file: str, tmp_path: Path) -> None:
    from bgekit.cli.main import main

    code = main([
        "finetune", "embedder", "--model_name_or_path", tiny_bert_dir, "--train_data", toy_train_file,
        "--output_dir", str(tmp_path / "cli"), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--train_group_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
    ])  # fmt: skip
    assert code == 0
    assert (tmp_path / "cli" / "bgekit.json").is_file() and (tmp_path / "cli" / "model.safetensors").is_file()
