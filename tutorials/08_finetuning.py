# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. Fine-tuning
#
# A general embedder gains on a domain when it is trained on that domain's queries. This tutorial
# fine-tunes all-MiniLM-L6-v2 on SciFact's training claims:
#
# 1. **mine hard negatives**: for each training query, passages the base model ranks high but that are not
#    judged relevant;
# 2. **train** with InfoNCE over in-batch and hard negatives (the HF `Trainer` underneath);
# 3. **evaluate** base and fine-tuned models on SciFact **test** queries;
# 4. **merge** the fine-tuned model with the base (LM-Cocktail: a weighted average of the weights), which
#    keeps more of the base model's general ability, and compare.
#
# To finish in a few minutes on 2 CPU cores this tutorial works on subsets: 400 of the 809 training
# queries, 60 training steps of 8 queries (one positive and three negatives each), and a corpus of 1,000
# SciFact documents (every document judged for the test queries or for the 400 training queries, plus
# random others). The full recipe (`python benchmarks/finetune_scifact.py`: the whole corpus, the 709
# queries left after a validation split, a chosen learning rate) gives +3.1 nDCG@10 on the full test set.

# %%
import json
import random
import shutil
from pathlib import Path

import torch
from common import OUT, SCIFACT, model_path
from safetensors.torch import load_file

from bgekit import Embedder
from bgekit.evaluation import RetrievalDataset, evaluate, load_dataset
from bgekit.finetune.embedder import parse_args, train
from bgekit.finetune.merge import merge_models
from bgekit.finetune.mining import MiningOptions, mine_hard_negatives

BASE = model_path()
WORK = OUT / "finetune"
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)

train_set = load_dataset(str(SCIFACT), split="train")
test_set = load_dataset(str(SCIFACT), split="test")
rng = random.Random(0)
train_queries = sorted(rng.sample(sorted(train_set.qrels), 400))
keep = {d for q in train_queries for d, r in train_set.qrels[q].items() if r > 0}
keep |= {d for docs in test_set.qrels.values() for d in docs}
others = sorted(set(test_set.corpus) - keep)
keep |= set(rng.sample(others, 1000 - len(keep)))
corpus = {d: test_set.corpus[d] for d in sorted(keep)}
subset = RetrievalDataset(
    name="scifact-1000", corpus=corpus, queries=test_set.queries, qrels=test_set.qrels, split="test"
)
print(
    f"{len(train_queries)} training queries; test: {len(subset.qrels)} queries over {len(corpus)} documents"
)


def text(doc):
    return f"{doc['title']} {doc['text']}".strip()


# %% [markdown]
# ## 1. Hard negatives
#
# A training line is `{"query", "pos": [...], "neg": [...]}` (FlagEmbedding's format). `mine_hard_negatives`
# encodes the candidate passages, ranks them for each query with the base model and samples negatives
# from ranks 10-100 (the top 10 is skipped: unjudged relevant passages often sit there).

# %%
base = Embedder(BASE, show_progress=False)
rows = [
    {
        "query": train_set.queries[q],
        "pos": [text(train_set.corpus[d]) for d, r in train_set.qrels[q].items() if r > 0],
    }
    for q in train_queries
]
candidates = [text(doc) for doc in corpus.values()]
mined = mine_hard_negatives(
    base,
    rows,
    candidates,
    MiningOptions(range_start=10, range_end=100, negatives=15),
    cache_dir=str(WORK / "mine-cache"),
)
with open(WORK / "train.jsonl", "w", encoding="utf-8") as handle:
    for row in mined:
        handle.write(json.dumps(row) + "\n")
print("query:", mined[0]["query"])
print("a hard negative:", mined[0]["neg"][0][:150], "...")
assert all(len(r["neg"]) == 15 and not set(r["neg"]) & set(r["pos"]) for r in mined)

# %% [markdown]
# ## 2. Train
#
# `bgekit.finetune.embedder` takes FlagEmbedding's arguments plus every HF `TrainingArguments` option; the
# same command runs with `torchrun` on many processes (`--negatives_cross_device`). The output folder loads
# with `Embedder(folder)`, pooling and normalisation included.

# %%
trainer = train(
    *parse_args(
        [
            "--model_name_or_path", BASE, "--train_data", str(WORK / "train.jsonl"), "--output_dir", str(WORK / "model"),
            "--max_steps", "60", "--per_device_train_batch_size", "8", "--train_group_size", "4",
            "--learning_rate", "3e-5", "--warmup_ratio", "0.1", "--temperature", "0.05",
            "--query_max_len", "64", "--passage_max_len", "128",
            "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "0",
            "--dataloader_drop_last", "--disable_tqdm", "true",
        ]
    )
)  # fmt: skip
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
print("training loss every 10 steps:", [round(x, 3) for x in losses])
assert losses[-1] < losses[0]

# %% [markdown]
# ## 3. Evaluate on SciFact test
#
# Both models on the same 300 test queries and the same 1,000 documents.

# %%
scores = {}
for name, folder in (("base", BASE), ("fine-tuned", str(WORK / "model"))):
    result = evaluate(Embedder(folder, show_progress=False), subset, model_name=name, show_progress=False)
    scores[name] = result.get("scifact-1000").scores["ndcg_at_10"]
    print(f"{name:11s} nDCG@10 {scores[name]:.4f}")
gain = scores["fine-tuned"] - scores["base"]
print(f"gain: {100 * gain:+.2f} points")
assert gain > 0

# %% [markdown]
# ## 4. Merge with the base model (LM-Cocktail)
#
# Fine-tuning on one domain can cost quality elsewhere. LM-Cocktail averages the weights of the base and
# fine-tuned models; with `example_data` it picks the weights from each model's loss on a few examples of
# the target task. Here an even 0.5/0.5 merge, then the weights LM-Cocktail picks from 20 training lines.
# A merged model usually keeps part of the gain while moving less far from the base model.

# %%
merge_models([str(WORK / "model"), BASE], WORK / "merged", weights=[0.5, 0.5])
with open(WORK / "examples.jsonl", "w", encoding="utf-8") as handle:
    for row in mined[:20]:
        handle.write(json.dumps(row) + "\n")
chosen = merge_models([str(WORK / "model"), BASE], WORK / "cocktail", example_data=WORK / "examples.jsonl")
print("LM-Cocktail weights (fine-tuned, base):", [round(w, 3) for w in chosen])
assert abs(sum(chosen) - 1) < 1e-6

# the merge is a weighted average of every weight tensor
first, second, merged = (
    load_file(str(f))
    for f in (
        WORK / "model" / "model.safetensors",
        Path(BASE) / "model.safetensors",
        WORK / "merged" / "model.safetensors",
    )
)
name = "encoder.layer.0.attention.self.query.weight"
assert torch.allclose(merged[name], 0.5 * first[name] + 0.5 * second[name], atol=1e-6)

result = evaluate(
    Embedder(str(WORK / "merged"), show_progress=False), subset, model_name="merged", show_progress=False
)
scores["merged"] = result.get("scifact-1000").scores["ndcg_at_10"]
print({k: round(v, 4) for k, v in scores.items()})
# averaging weights lands between the two models here
assert (
    min(scores["base"], scores["fine-tuned"]) - 0.01
    < scores["merged"]
    < max(scores["base"], scores["fine-tuned"]) + 0.01
)
