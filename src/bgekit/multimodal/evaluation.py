"""Image-text retrieval evaluation in the BEIR layout, with bgekit's pytrec_eval metrics.

A dataset folder holds ``corpus.jsonl`` and ``queries.jsonl`` whose rows may carry an ``image`` (a path
relative to the folder) beside or instead of a ``text``, and ``qrels/<split>.tsv`` as in BEIR. Queries and
documents with both are composed items. Scores are the same pytrec_eval metrics (nDCG, MAP, recall,
precision, MRR at each k) as ``bgekit.evaluation`` reports for text datasets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from bgekit.errors import DataFormatError
from bgekit.evaluation.datasets import read_qrels_tsv
from bgekit.evaluation.metrics import DEFAULT_K_VALUES, compute_metrics, validate_k_values
from bgekit.multimodal.index import MultimodalIndex, image_corpus


def evaluate_multimodal(
    embedder: Any,
    folder: str | os.PathLike[str],
    split: str = "test",
    *,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    per_query: bool = False,
) -> dict[str, Any]:
    """Score ``embedder`` (a :class:`~bgekit.multimodal.MultimodalEmbedder`) on an image-text dataset.

    Returns:
        ``{"scores": {metric: mean}, "per_query": {query_id: {metric: value}} or None, "queries": n,
        "documents": n, "seconds": s, "run": {query_id: {doc_id: score}}}``; queries without judgements are left out of the means, as BEIR.

    Raises:
        DataFormatError: a missing file, naming it and the layout expected.

    Example:
        >>> evaluate_multimodal(model, "datasets/photos", "test")["scores"]["ndcg_at_10"]   # doctest: +SKIP
    """
    folder = os.fspath(folder)
    ks = validate_k_values(k_values)
    paths = {
        "corpus": os.path.join(folder, "corpus.jsonl"),
        "queries": os.path.join(folder, "queries.jsonl"),
        "qrels": os.path.join(folder, "qrels", f"{split}.tsv"),
    }
    for path in paths.values():
        if not os.path.isfile(path):
            raise DataFormatError(
                f"no {os.path.relpath(path, folder)}; an image-text dataset needs corpus.jsonl, queries.jsonl "
                f"and qrels/{split}.tsv (rows with 'text' and/or 'image', image paths relative to the folder)",
                folder,
            )
    start = time.perf_counter()
    qrels = read_qrels_tsv(paths["qrels"])
    index = MultimodalIndex.build(embedder, paths["corpus"])
    query_ids, texts, images = image_corpus(paths["queries"])
    judged = [i for i, query_id in enumerate(query_ids) if query_id in qrels]
    top_k = min(max(ks), len(index))
    hits = (
        index.search([texts[i] for i in judged], top_k, images=[images[i] for i in judged]) if judged else []
    )
    run = {query_ids[i]: {hit.id: hit.score for hit in row} for i, row in zip(judged, hits, strict=True)}
    means, rows = compute_metrics(qrels, run, ks, per_query=per_query)
    return {
        "scores": means,
        "per_query": rows,
        "queries": len(judged),
        "documents": len(index),
        "seconds": round(time.perf_counter() - start, 3),
        "run": run,
    }
