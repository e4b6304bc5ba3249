"""What ``bgekit index --images`` and ``bgekit eval`` on image-text datasets run (kept out of the thin CLI
modules): an image corpus into a ``MultimodalIndex``, and datasets whose rows name images scored."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from bgekit.errors import ConfigError
from bgekit.index.ann import AnnConfig

if TYPE_CHECKING:
    from bgekit.evaluation.results import EvaluationResult


def index_images(args: argparse.Namespace, ann: AnnConfig) -> int:
    """Encode ``args.corpus`` (a folder of images or a JSONL with ``image``/``text`` rows) with a
    ``MultimodalEmbedder`` and save the index to ``args.output``."""
    from bgekit.multimodal.embedder import MultimodalEmbedder
    from bgekit.multimodal.index import MultimodalIndex

    unsupported = [
        flag
        for flag, given in (
            ("--store", args.store is not None),
            ("--ray", getattr(args, "ray", None) is not None),
            ("--quantization", args.quantization is not None),
            ("--trust-remote-code", args.trust_remote_code),
            ("--no-sparse", args.no_sparse),
        )
        if given
    ]
    if unsupported:
        raise ConfigError(
            f"--images builds an index folder (--output) on one process; drop {', '.join(unsupported)}"
        )
    start = time.perf_counter()
    with MultimodalEmbedder(
        args.model, dtype=args.dtype, batch_size=args.batch_size, devices=args.devices, show_progress=False
    ) as embedder:
        index = MultimodalIndex.build(
            embedder, args.corpus, chunk_size=args.chunk_size, show_progress=not args.no_progress, ann=ann
        )
    index.save(args.output)
    print(
        f"indexed {len(index)} documents ({index.info['images']} images) -> {args.output} in "
        f"{time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    return 0


def names_images(folder: str) -> bool:
    """Whether ``folder`` is a BEIR-layout dataset whose first corpus or query row names an ``image``."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        return False  # the text loader reports the line
                    if isinstance(row, dict) and row.get("image") is not None:
                        return True
                    break
    return False


def image_dataset_folders(specs: list[str]) -> list[str] | None:
    """The dataset folders of ``specs`` when every one is an image-text dataset, ``None`` when none is.

    A spec is a dataset folder or a folder of them (as ``bgekit eval --dataset`` takes); descriptor names
    and text datasets make it a text evaluation.

    Raises:
        ConfigError: some specs name image datasets and others do not.
    """
    from bgekit.evaluation.datasets import find_dataset_folders, is_dataset_folder

    folders: list[str] = []
    for spec in specs:
        if not os.path.isdir(spec) or is_dataset_folder(spec):
            folders.append(spec)
        else:
            folders.extend(find_dataset_folders(spec))
    images = [f for f in folders if os.path.isdir(f) and names_images(f)]
    if not images:
        return None
    if len(images) != len(folders):
        text = sorted(set(folders) - set(images))
        raise ConfigError(
            f"--dataset mixes image-text datasets ({', '.join(images)}) with text ones ({', '.join(text)}); "
            "evaluate them in separate calls"
        )
    return folders


def evaluate_images(args: argparse.Namespace, folders: list[str]) -> EvaluationResult:
    """What ``bgekit eval`` runs on image-text datasets: each model (a ``MultimodalEmbedder``) on each
    folder with :func:`~bgekit.multimodal.evaluation.evaluate_multimodal`, reports and TREC runs written
    under ``--output-dir`` as for text datasets (no embedding cache)."""
    from bgekit.evaluation.evaluate import default_model_name
    from bgekit.evaluation.metrics import write_trec_run
    from bgekit.evaluation.reports import write_reports
    from bgekit.evaluation.results import EvaluationResult, StageResult
    from bgekit.multimodal.embedder import MultimodalEmbedder
    from bgekit.multimodal.evaluation import evaluate_multimodal

    unsupported = [
        flag
        for flag, given in (
            ("--reranker", args.reranker is not None),
            ("--pooling", args.pooling is not None),
            ("--query-max-length", args.query_max_length is not None),
            ("--passage-max-length", args.passage_max_length is not None),
            ("--truncate-dim", args.truncate_dim is not None),
            ("--ignore-identical-ids", args.ignore_identical_ids),
            ("--trust-remote-code", args.trust_remote_code),
        )
        if given
    ]
    if unsupported:
        raise ConfigError(
            f"image-text datasets are evaluated by dense search only; drop {', '.join(unsupported)}"
        )
    names = args.model_name or [default_model_name(m) for m in args.model]
    if len(names) != len(args.model):
        raise ConfigError(f"--model-name gives {len(names)} names for {len(args.model)} models")
    kwargs = {
        key: value
        for key, value in {
            "query_instruction": args.query_instruction,
            "passage_instruction": args.passage_instruction,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "devices": args.devices,
        }.items()
        if value is not None
    }
    out = args.output_dir
    results: list[StageResult] = []
    for model, label in zip(args.model, names, strict=True):
        with MultimodalEmbedder(model, show_progress=False, **kwargs) as embedder:
            for folder in folders:
                dataset = os.path.basename(os.path.normpath(folder))
                scores = evaluate_multimodal(
                    embedder, folder, args.split, k_values=args.k_values, per_query=args.per_query
                )
                if args.main_score not in scores["scores"]:
                    raise ConfigError(
                        f"--main-score {args.main_score!r} is not computed; choose one of {sorted(scores['scores'])}"
                    )
                run_file = None
                if out:
                    slug = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
                    run_file = os.path.join(
                        out, "runs", f"{slug(label)}__{slug(dataset)}__{args.split}__retrieval.trec"
                    )
                    os.makedirs(os.path.dirname(run_file), exist_ok=True)
                    write_trec_run(run_file, scores["run"], tag="bgekit-retrieval")
                result = StageResult(
                    model=label,
                    dataset=dataset,
                    split=args.split,
                    stage="retrieval",
                    scores=scores["scores"],
                    main_score_name=args.main_score,
                    per_query=scores["per_query"],
                    num_queries=scores["queries"],
                    num_documents=scores["documents"],
                    seconds={"total": scores["seconds"]},
                    run_file=run_file,
                )
                print(
                    f"{label} | {dataset} ({args.split}) | retrieval: "
                    f"{args.main_score}={result.main_score:.4f}",
                    file=sys.stderr,
                )
                results.append(result)
    evaluation = EvaluationResult(
        results=results,
        config={"models": list(args.model), "datasets": folders, "split": args.split, "kind": "image-text"},
    )
    if out:
        evaluation.files.update(write_reports(evaluation, out, metrics=args.metrics))
    return evaluation
