"""``bgekit encode``: JSONL in, .npy out, atomically, with errors naming file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bgekit import Embedder
from bgekit.cli.main import main


def test_encode_corpus_and_queries(
    tiny_bert_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"_id": "1", "title": "Pandas", "text": "Giant pandas are bears."}, {"_id": "2", "text": "BGE."}]
    src = tmp_path / "corpus.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "emb.npy"
    assert main(["encode", "--model", tiny_bert_dir, "--input", str(src), "--output", str(out)]) == 0
    vectors = np.load(out)
    expected = Embedder(tiny_bert_dir, device="cpu").encode_corpus(
        [{"title": "Pandas", "text": "Giant pandas are bears."}, "BGE."]
    )
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert "encoded 2 texts" in capsys.readouterr().err
    qout = tmp_path / "q.npy"
    assert (
        main(["encode", "--model", tiny_bert_dir, "--input", str(src), "--output", str(qout), "--queries"])
        == 0
    )
    assert np.load(qout).shape == (2, 32)


def test_malformed_line_names_file_and_line(
    tiny_bert_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": broken}\n')
    out = tmp_path / "emb.npy"
    assert main(["encode", "--model", tiny_bert_dir, "--input", str(src), "--output", str(out)]) == 2
    assert f"{src}:2: invalid JSON" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_missing_text_field(tiny_bert_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"body": "no text here"}\n')
    assert (
        main(["encode", "--model", tiny_bert_dir, "--input", str(src), "--output", str(tmp_path / "o.npy")])
        == 2
    )
    assert (
        "bad.jsonl:1: expected a JSON string or an object with a string 'text' field"
        in capsys.readouterr().err
    )


def test_binary_precision(tiny_bert_dir: str, tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('"one text"\n"another text"\n')
    out = tmp_path / "b.npy"
    args = [
        "encode",
        "--model",
        tiny_bert_dir,
        "--input",
        str(src),
        "--output",
        str(out),
        "--precision",
        "ubinary",
    ]
    assert main(args) == 0
    packed = np.load(out)
    assert packed.dtype == np.uint8 and packed.shape == (2, 4)  # 32 dims -> 4 bytes
    floats = Embedder(tiny_bert_dir, device="cpu").encode_corpus(["one text", "another text"])
    np.testing.assert_array_equal(np.unpackbits(packed, axis=1).astype(bool), floats > 0)


def test_backend_auto_reports_its_choice(
    tiny_bert_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "Giant pandas are bears."}\n{"text": "BGE."}\n')
    out = tmp_path / "emb.npy"
    argv = ["encode", "--model", str(model), "--input", str(src), "--output", str(out), "--backend", "auto"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "backend auto: " in err
        and "queries/s" in err
        and "passages/s" in err
        and "onnx/fp32" in err
        and "torch/fp32" in err
    )
    expected = Embedder(tiny_bert_dir, device="cpu").encode_corpus(["Giant pandas are bears.", "BGE."])
    chosen = err.split("backend auto: ", 1)[1].split(" at ", 1)[0]
    if chosen.endswith("/int8"):  # OpenVINO's dynamic int8 qualified on the sample: full quality
        assert float((np.load(out) * expected).sum(1).min()) >= 0.995
    else:
        np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
