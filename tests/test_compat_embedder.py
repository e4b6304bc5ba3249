"""FlagEmbedding's FlagModel / FlagAutoModel names on bgekit, against FlagEmbedding itself."""

from __future__ import annotations

import numpy as np
import pytest

from bgekit import ConfigError
from bgekit.compat import FlagAutoModel, FlagModel

INSTRUCTION = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def texts(scifact_corpus: list[dict], scifact_queries: list[dict]) -> tuple[list[str], list[str]]:
    return [q["text"] for q in scifact_queries[:20]], [d["text"] for d in scifact_corpus[:40]]


def test_flagmodel_equals_flagembedding(tiny_bert_dir: str, texts: tuple[list[str], list[str]]) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    queries, passages = texts
    kwargs = {"query_instruction_for_retrieval": INSTRUCTION, "use_fp16": False, "devices": ["cpu"]}
    ours = FlagModel(tiny_bert_dir, **kwargs)
    ref = flag.FlagModel(tiny_bert_dir, **kwargs)
    np.testing.assert_allclose(ours.encode_queries(queries), ref.encode_queries(queries), atol=1e-5)
    np.testing.assert_allclose(ours.encode_corpus(passages), ref.encode_corpus(passages), atol=1e-5)
    s = ours.settings
    assert (s.pooling, s.normalize, s.query_max_length, s.passage_max_length) == ("cls", True, 512, 512)


def test_flagmodel_mean_pooling_and_truncate_dim(
    tiny_bert_dir: str, texts: tuple[list[str], list[str]]
) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    _, passages = texts
    kwargs = {"pooling_method": "mean", "use_fp16": False, "devices": ["cpu"], "passage_max_length": 128}
    ours = FlagModel(tiny_bert_dir, **kwargs).encode_corpus(passages)
    ref = flag.FlagModel(tiny_bert_dir, **kwargs).encode_corpus(passages)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_unknown_flag_argument_is_an_error_not_stored(tiny_bert_dir: str) -> None:
    with pytest.raises(ConfigError, match="use_fp61.*Valid arguments"):
        FlagModel(tiny_bert_dir, use_fp61=True)


def test_from_finetuned_reads_the_published_table_and_convert_to_numpy(tiny_bert_dir: str) -> None:
    model = FlagAutoModel.from_finetuned(
        tiny_bert_dir, pooling_method="cls", devices=["cpu"], convert_to_numpy=False
    )
    out = model.encode_queries(["a", "b"])
    assert not isinstance(out, np.ndarray) and tuple(out.shape) == (2, 32)
