"""Models whose code ships with the checkpoint (``auto_map``): refused without the flag, then indexed,
searched (``bgekit search --trust-remote-code``) and served (``bgekit serve --trust-remote-code``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgekit import Embedder, Reranker
from bgekit.cli import search as search_cli
from bgekit.cli import serve as serve_cli
from bgekit.cli.main import main
from bgekit.errors import ConfigError, ModelLoadError
from bgekit.index import SearchIndex
from tests.builders import build_bert_cross_encoder, build_tiny_bert

CUSTOM_CODE = """
from transformers import BertConfig, BertForSequenceClassification, BertModel


class TinyCustomConfig(BertConfig):
    model_type = "bgekit-test-custom-bert"


class TinyCustomModel(BertModel):
    config_class = TinyCustomConfig


class TinyCustomForSequenceClassification(BertForSequenceClassification):
    config_class = TinyCustomConfig
"""

CORPUS = [
    {"_id": "panda", "title": "", "text": "The giant panda is a bear native to China."},
    {"_id": "paris", "title": "", "text": "Paris is the capital of France."},
    {"_id": "bge", "title": "", "text": "BGE is an embedding model for retrieval."},
]


def with_custom_code(folder: str, auto_class: str, model_class: str) -> str:
    """Make ``folder``'s config point at a model class in a Python file inside the folder (``auto_map``)."""
    (Path(folder) / "custom_bert.py").write_text(CUSTOM_CODE, encoding="utf-8")
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_type"] = "bgekit-test-custom-bert"
    config["architectures"] = [model_class]
    config["auto_map"] = {
        "AutoConfig": "custom_bert.TinyCustomConfig",
        auto_class: f"custom_bert.{model_class}",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def custom_embedder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    folder = build_tiny_bert(tmp_path_factory.mktemp("custom-embedder"), minilm_tokenizer_dir)
    return with_custom_code(folder, "AutoModel", "TinyCustomModel")


@pytest.fixture(scope="module")
def custom_reranker_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    folder = build_bert_cross_encoder(tmp_path_factory.mktemp("custom-reranker"), minilm_tokenizer_dir)
    return with_custom_code(
        folder, "AutoModelForSequenceClassification", "TinyCustomForSequenceClassification"
    )


@pytest.fixture(scope="module")
def custom_index(tmp_path_factory: pytest.TempPathFactory, custom_embedder_dir: str) -> str:
    embedder = Embedder(custom_embedder_dir, device="cpu", trust_remote_code=True)
    assert type(embedder.model).__name__ == "TinyCustomModel"  # the checkpoint's own class ran
    folder = str(tmp_path_factory.mktemp("custom-index") / "index")
    SearchIndex.build(embedder, CORPUS).save(folder)
    return folder


def test_without_the_flag_a_clear_model_load_error(
    custom_embedder_dir: str, custom_reranker_dir: str
) -> None:
    with pytest.raises(ModelLoadError, match=r"'bgekit-test-custom-bert'.*pass trust_remote_code=True"):
        Embedder(custom_embedder_dir, device="cpu")
    with pytest.raises(ConfigError, match="trust_remote_code=True"):  # the same error, a ConfigError too
        Reranker(custom_reranker_dir, device="cpu")


def test_search_with_the_flag_finds_hits(
    custom_index: str, custom_reranker_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    query = ["--query", "what is a panda?", "--top-k", "2", "--json"]
    assert main(["search", "--index", custom_index, *query]) == 2  # the index's model needs the flag
    assert "trust_remote_code=True" in capsys.readouterr().err
    argv = [
        "search",
        "--index",
        custom_index,
        *query,
        "--reranker",
        custom_reranker_dir,
        "--trust-remote-code",
    ]
    assert main(argv) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 2 and {h["id"] for h in hits} <= {row["_id"] for row in CORPUS}


def test_second_stage_passes_the_flag_to_the_reranker(custom_reranker_dir: str) -> None:
    parser = argparse.ArgumentParser()
    search_cli.add_arguments(parser)
    args = parser.parse_args(["--index", "x", "--query", "q", "--reranker", custom_reranker_dir])
    with pytest.raises(ConfigError, match="trust_remote_code=True"):
        search_cli.second_stage(args, None)
    args.trust_remote_code = True
    assert isinstance(search_cli.second_stage(args, None), Reranker)


def test_serve_with_the_flag_serves_embed(
    custom_index: str, custom_embedder_dir: str, custom_reranker_dir: str
) -> None:
    from fastapi.testclient import TestClient

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--index", custom_index, "--reranker", custom_reranker_dir])
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        serve_cli.build_app(args)
    args.trust_remote_code = True
    with TestClient(serve_cli.build_app(args), base_url="http://localhost") as client:
        vectors: Any = client.post("/embed", json={"inputs": ["what is a panda?"]}).json()
        ranking = client.post("/rerank", json={"query": "a panda?", "texts": ["a bear", "a city"]}).json()
    embedder = Embedder(custom_embedder_dir, device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(vectors, embedder.encode(["what is a panda?"]), atol=1e-5)
    assert sorted(r["index"] for r in ranking) == [0, 1]
