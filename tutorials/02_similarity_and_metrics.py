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
# # 2. Similarity and metrics
#
# A retriever ranks passages by a **similarity** between the query's vector and each passage's vector,
# and a ranking is judged by **metrics** against relevance judgments (*qrels*). This tutorial compares
# cosine, dot product and L2 distance, computes nDCG, MAP, recall and MRR by hand on a toy run and checks
# them against `pytrec_eval` (the code BEIR and MTEB use), then scores a real run: all-MiniLM-L6-v2 on
# the SciFact test queries, with a plot of the scores of relevant and non-relevant passages.
#
# The SciFact step encodes the 5,183 abstracts once (2-3 minutes on an idle 2-core CPU) into a
# `SearchIndex` saved under the output folder (`common.scifact_index`); tutorials 3, 4 and 5 reuse it.

# %%
import json
import math
import sys

import matplotlib
import numpy as np
import pytrec_eval
from common import OUT, SCIFACT, IndexedCorpusEncoder, model_path, scifact_index

from bgekit import Embedder
from bgekit.evaluation import compute_metrics, evaluate, read_trec_run

if "ipykernel" not in sys.modules:  # a script: draw to files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

model = Embedder(model_path(), show_progress=False)

# %% [markdown]
# ## Cosine, dot product, L2
#
# Cosine similarity is the dot product of the vectors divided by their lengths. bgekit normalises
# embeddings to length 1 by default, so the dot product **is** the cosine, and the squared L2 distance
# is `2 - 2 * cosine`: all three give the same ranking. Without normalisation they can disagree.

# %%
query = model.encode_queries("how do vaccines train the immune system?")
passages = model.encode_corpus(
    [
        "Vaccines expose the immune system to an antigen so that it learns to recognise the pathogen.",
        "Antibodies are proteins made by B cells.",
        "The Eiffel Tower is in Paris.",
    ]
)
dot = passages @ query
cosine = dot / (np.linalg.norm(passages, axis=1) * np.linalg.norm(query))
l2 = np.linalg.norm(passages - query, axis=1)
print("dot   ", np.round(dot, 4))
print("cosine", np.round(cosine, 4))
print("L2    ", np.round(l2, 4))
assert np.allclose(dot, cosine, atol=1e-6)
assert np.allclose(l2**2, 2 - 2 * cosine, atol=1e-5)
assert list(np.argsort(-dot)) == list(np.argsort(l2))

raw = Embedder(model_path(), normalize=False, show_progress=False)
q_raw, p_raw = raw.encode_queries(["vaccines"]), raw.encode_corpus(["vaccine " * 40, "vaccines"])
print(
    "unnormalised: dot",
    np.round(p_raw @ q_raw[0], 3),
    "| cosine",
    np.round((p_raw @ q_raw[0]) / np.linalg.norm(p_raw, axis=1) / np.linalg.norm(q_raw[0]), 3),
)

# %% [markdown]
# ## Metrics by hand on a toy run
#
# Qrels give graded relevance (0 = judged not relevant); a run gives each query's retrieved documents
# with scores. With the ranking `d_1, d_2, ...` of a query and `rel_i` the relevance of `d_i`:
#
# * **nDCG@k** = DCG@k / IDCG@k with DCG@k = sum over i <= k of `rel_i / log2(i + 1)` (trec_eval's linear
#   gain; some libraries use `2^rel_i - 1`, which differs only for grades above 1), IDCG the DCG of the
#   best possible ranking of the judged documents;
# * **MAP@k**: the mean over relevant documents of the precision at the rank of each one retrieved
#   within k (0 for one not retrieved), divided by the number of relevant documents;
# * **Recall@k**: the share of relevant documents in the top k;
# * **MRR@k**: 1 / the rank of the first relevant document within k (0 if none).

# %%
qrels = {
    "q1": {"d1": 2, "d3": 1, "d7": 1, "d9": 0},
    "q2": {"d4": 1},
    "q3": {"d2": 1, "d5": 2},
}
run = {
    "q1": {"d3": 0.95, "d2": 0.90, "d1": 0.80, "d9": 0.70, "d8": 0.60},
    "q2": {"d6": 0.99, "d5": 0.80, "d7": 0.70, "d4": 0.50, "d1": 0.20},
    "q3": {"d5": 0.91, "d2": 0.89, "d1": 0.10, "d3": 0.05, "d4": 0.01},
}


def ranking(scores):
    # trec_eval's order: score descending, ties broken by document id descending
    return [d for d, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def ndcg(rels, ranked, k):
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rels.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def average_precision(rels, ranked, k):
    relevant = {d for d, r in rels.items() if r > 0}
    hits, total = 0, 0.0
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def recall(rels, ranked, k):
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant)


def reciprocal_rank(rels, ranked, k):
    return next((1 / (i + 1) for i, d in enumerate(ranked[:k]) if rels.get(d, 0) > 0), 0.0)


by_hand = {}
for k in (1, 3, 5):
    for name, fn in (
        ("ndcg", ndcg),
        ("map", average_precision),
        ("recall", recall),
        ("mrr", reciprocal_rank),
    ):
        by_hand[f"{name}_at_{k}"] = float(np.mean([fn(qrels[q], ranking(run[q]), k) for q in qrels]))
print(json.dumps({k: round(v, 4) for k, v in by_hand.items()}, indent=0))

# %% [markdown]
# The same figures from `pytrec_eval` directly (its measures `ndcg_cut.k`, `map_cut.k`, `recall.k`) and
# from `bgekit.evaluation.compute_metrics`, which calls pytrec_eval and adds MRR@k on the same ranking:

# %%
evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5", "map_cut.1,3,5", "recall.1,3,5"})
per_query = evaluator.evaluate(run)
ours, _ = compute_metrics(qrels, run, k_values=[1, 3, 5])
for k in (1, 3, 5):
    for name, measure in (("ndcg", f"ndcg_cut_{k}"), ("map", f"map_cut_{k}"), ("recall", f"recall_{k}")):
        reference = float(np.mean([scores[measure] for scores in per_query.values()]))
        assert math.isclose(by_hand[f"{name}_at_{k}"], reference, abs_tol=1e-9), (name, k)
        assert math.isclose(ours[f"{name}_at_{k}"], reference, abs_tol=1e-9), (name, k)
    assert math.isclose(ours[f"mrr_at_{k}"], by_hand[f"mrr_at_{k}"], abs_tol=1e-9)
print(
    "by hand == pytrec_eval == bgekit: nDCG@5",
    round(ours["ndcg_at_5"], 4),
    "MAP@5",
    round(ours["map_at_5"], 4),
)

# %% [markdown]
# ## A real run: SciFact test
#
# `evaluate` encodes the corpus, searches each of the 300 test queries exactly (faiss inner product) and
# scores the top 1,000 with pytrec_eval. It takes a model path or any object with `encode_queries` and
# `encode_corpus`: here `IndexedCorpusEncoder`, which answers passages with the vectors of the saved
# SciFact index (the same model and settings) so the corpus is encoded once for all the tutorials. Its nDCG@10 is the figure MTEB publishes for this model on
# SciFact, 0.6451. We recompute it by hand from the TREC run file it writes.

# %%
encoder = IndexedCorpusEncoder(model, scifact_index(model))
result = evaluate(encoder, str(SCIFACT), split="test", output_dir=str(OUT / "eval"), show_progress=False)
stage = result.get("scifact")
print(
    {name: round(stage.scores[name], 4) for name in ("ndcg_at_10", "map_at_10", "recall_at_100", "mrr_at_10")}
)
assert round(stage.scores["ndcg_at_10"], 4) == 0.6451

scifact_run = read_trec_run(stage.run_file)
scifact_qrels = {}
with open(SCIFACT / "qrels" / "test.tsv", encoding="utf-8") as handle:
    next(handle)
    for line in handle:
        qid, did, rel = line.split()
        scifact_qrels.setdefault(qid, {})[did] = int(rel)
ndcg10 = float(
    np.mean([ndcg(scifact_qrels[q], ranking(scifact_run[q]), 10) for q in scifact_qrels if q in scifact_run])
)
print("nDCG@10 by hand:", round(ndcg10, 6), "| bgekit:", round(stage.scores["ndcg_at_10"], 6))
assert math.isclose(ndcg10, stage.scores["ndcg_at_10"], abs_tol=1e-9)

# %% [markdown]
# ## Scores of relevant and non-relevant passages
#
# Among each query's top 100, how do the cosine scores of relevant passages compare with the rest? A
# good embedder separates the two; the overlap is where retrieval fails.

# %%
relevant, other = [], []
for qid, docs in scifact_run.items():
    for did in ranking(docs)[:100]:
        (relevant if scifact_qrels.get(qid, {}).get(did, 0) > 0 else other).append(docs[did])
fig, ax = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(min(other), max(relevant), 50)
ax.hist(other, bins=bins, density=True, alpha=0.6, label=f"not judged relevant ({len(other):,})")
ax.hist(relevant, bins=bins, density=True, alpha=0.6, label=f"relevant ({len(relevant):,})")
ax.set_xlabel("cosine similarity (top 100 of each SciFact test query)")
ax.set_ylabel("density")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "02_score_distributions.png", dpi=100)
print(f"mean score: relevant {np.mean(relevant):.3f}, others {np.mean(other):.3f}")
assert np.mean(relevant) > np.mean(other) + 0.1
