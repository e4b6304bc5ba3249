"""Image-text retrieval evaluation on a BEIR-layout dataset of real photographs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bgekit.errors import DataFormatError
from bgekit.evaluation.metrics import compute_metrics
from bgekit.multimodal import MultimodalEmbedder
from bgekit.multimodal.evaluation import evaluate_multimodal

CAPTIONS = ["an astronaut", "a cup of coffee", "a tabby cat", "a photographer", "a rocket", "a motorcycle"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_image_queries_find_their_photo_and_text_queries_match_brute_force(tiny_clip: str, photos, tmp_path):
    model = MultimodalEmbedder(tiny_clip, device="cpu")
    rel = [os.path.relpath(p, tmp_path) for p in photos]
    _write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "image": p} for i, p in enumerate(rel)])
    queries = [{"_id": f"img{i}", "image": p} for i, p in enumerate(rel)]
    queries += [{"_id": f"txt{i}", "text": c} for i, c in enumerate(CAPTIONS)]
    queries += [
        {"_id": "both", "image": rel[2], "text": "the cat at night"},
        {"_id": "unjudged", "text": "x"},
    ]
    _write_jsonl(tmp_path / "queries.jsonl", queries)
    (tmp_path / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{kind}{i}\td{i}\t1" for kind in ("img", "txt") for i in range(6)] + ["both\td2\t2"]
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")

    result = evaluate_multimodal(model, tmp_path, "test", k_values=[1, 3, 5], per_query=True)
    assert result["queries"] == 13 and result["documents"] == 6
    for i in range(6):
        assert result["per_query"][f"img{i}"]["ndcg_at_1"] == 1.0  # each photo finds itself first
    # the text and composed queries score as a brute-force ranking of the same vectors does
    corpus = model.encode_corpus(images=photos)
    text_q = model.encode_queries([*CAPTIONS, "the cat at night"], images=[None] * 6 + [photos[2]])
    scores = text_q @ corpus.T
    ids = [f"txt{i}" for i in range(6)] + ["both"]
    run = {q: {f"d{j}": float(s) for j, s in enumerate(row)} for q, row in zip(ids, scores, strict=True)}
    qrels = {f"txt{i}": {f"d{i}": 1} for i in range(6)} | {"both": {"d2": 2}}
    _, expected = compute_metrics(qrels, run, [1, 3, 5], per_query=True)
    assert expected is not None
    for query_id in ids:
        for name in ("ndcg_at_3", "recall_at_5", "mrr_at_5"):
            assert result["per_query"][query_id][name] == pytest.approx(expected[query_id][name], abs=1e-6)
    per = result["per_query"]
    assert result["scores"]["ndcg_at_3"] == pytest.approx(
        np.mean([per[q]["ndcg_at_3"] for q in per]), abs=1e-9
    )

    os.remove(tmp_path / "qrels" / "test.tsv")
    with pytest.raises(DataFormatError, match=r"no qrels/test.tsv"):
        evaluate_multimodal(model, tmp_path)
