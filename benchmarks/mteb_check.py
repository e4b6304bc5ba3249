"""Check bgekit's scores against mteb's own evaluator on the same local data, through ``MTEBEncoder``.

mteb is not a bgekit dependency and its published tasks download from the hub, so this script builds
an mteb retrieval task from a local BEIR folder (optionally a subset) and runs, in one process:

1. ``mteb.evaluate`` with the bgekit embedder wrapped in ``bgekit.evaluation.mteb_adapter.MTEBEncoder``;
2. ``bgekit.evaluation.evaluate`` with the same embedder.

It prints both sets of scores and their largest difference. Run it where mteb is installed:

    python benchmarks/mteb_check.py --model PATH --dataset ../shared/data/scifact --queries 50 --docs 400
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_task(dataset):  # type: ignore[no-untyped-def]
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    split = RetrievalSplitData(
        queries=Dataset.from_list([{"id": q, "text": t} for q, t in dataset.queries.items()]),
        corpus=Dataset.from_list(
            [
                {"id": d, "title": doc.get("title", ""), "text": doc["text"]}
                for d, doc in dataset.corpus.items()
            ]
        ),
        relevant_docs={q: dict(docs) for q, docs in dataset.qrels.items()},
        top_ranked=None,
    )

    class LocalRetrievalTask(AbsTaskRetrieval):
        metadata = TaskMetadata(
            type="Retrieval",
            name=f"Local{dataset.name.title().replace('-', '')}",
            main_score="ndcg_at_10",
            description="A local BEIR folder evaluated by mteb's own retrieval evaluator.",
            reference="https://github.com/embeddings-benchmark/mteb",
            dataset={"path": "local", "revision": "local"},
            category="t2t",
            eval_splits=[dataset.split],
            eval_langs=["eng-Latn"],
            date=("2020-01-01", "2020-01-01"),
            dialect=[],
            domains=[],
            task_subtypes=[],
            license="cc-by-4.0",
            annotations_creators="derived",
            modalities=["text"],
            sample_creation="found",
            bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: object) -> None:
            self.dataset = {"default": {dataset.split: split}}
            self.data_loaded = True

    return LocalRetrievalTask()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=0, help="first N judged queries only (0: all)")
    parser.add_argument("--docs", type=int, default=0, help="their judged docs plus others up to N (0: all)")
    args = parser.parse_args()

    import mteb

    from bgekit import Embedder
    from bgekit.evaluation import RetrievalDataset, evaluate, load_dataset
    from bgekit.evaluation.mteb_adapter import MTEBEncoder

    dataset = load_dataset(args.dataset, args.split)
    if args.queries:
        qids = list(dataset.qrels)[: args.queries]
        qrels = {q: dataset.qrels[q] for q in qids}
        judged = {d for docs in qrels.values() for d in docs}
        keep = [d for d in dataset.corpus if d in judged]
        keep += [d for d in dataset.corpus if d not in judged][
            : max(0, (args.docs or len(dataset.corpus)) - len(keep))
        ]
        keep_set = set(keep)
        dataset = RetrievalDataset(
            dataset.name,
            {d: dataset.corpus[d] for d in dataset.corpus if d in keep_set},
            {q: dataset.queries[q] for q in qids},
            qrels,
            dataset.split,
        )
    embedder = Embedder(args.model, device="cpu")
    print(
        f"mteb {mteb.__version__}; {len(dataset.queries)} queries, {len(dataset.corpus)} documents",
        file=sys.stderr,
    )
    result = mteb.evaluate(MTEBEncoder(embedder), build_task(dataset), cache=None, show_progress_bar=False)
    theirs = result.task_results[0].scores[args.split][0]
    with tempfile.TemporaryDirectory() as tmp:
        ours = evaluate(embedder, dataset, output_dir=tmp, show_progress=False).results[0].scores
    names = [
        n for n in ("ndcg_at_10", "recall_at_100", "map_at_10", "mrr_at_10", "precision_at_1") if n in theirs
    ]
    print("| metric | mteb | bgekit |\n|---|---:|---:|")
    for name in names:
        print(f"| {name} | {theirs[name]:.5f} | {ours[name]:.5f} |")
    worst = max(abs(theirs[n] - ours[n]) for n in names)
    print(f"largest difference: {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
