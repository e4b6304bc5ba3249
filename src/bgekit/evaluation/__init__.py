"""Evaluation: datasets (loaders + descriptors), faiss search, pytrec_eval metrics, caching and reports.

Example:
    >>> from bgekit.evaluation import evaluate
    >>> result = evaluate("all-MiniLM-L6-v2", "../shared/data/scifact", output_dir="results")  # doctest: +SKIP
    >>> print(result.to_markdown())                                                           # doctest: +SKIP
"""

from __future__ import annotations

from bgekit.evaluation.datasets import RetrievalDataset, find_dataset_folders, load_dataset, save_dataset
from bgekit.evaluation.descriptors import DatasetDescriptor, get_descriptor, known_descriptor_names
from bgekit.evaluation.evaluate import evaluate
from bgekit.evaluation.metrics import compute_metrics, mrr_at_k, read_trec_run, write_trec_run
from bgekit.evaluation.results import EvaluationResult, StageResult
from bgekit.evaluation.search import EncoderLike, RerankerLike, dense_search, rerank

__all__ = [
    "DatasetDescriptor",
    "EncoderLike",
    "EvaluationResult",
    "RerankerLike",
    "RetrievalDataset",
    "StageResult",
    "compute_metrics",
    "dense_search",
    "evaluate",
    "find_dataset_folders",
    "get_descriptor",
    "known_descriptor_names",
    "load_dataset",
    "mrr_at_k",
    "read_trec_run",
    "rerank",
    "save_dataset",
    "write_trec_run",
]
