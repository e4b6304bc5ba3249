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
# # 5. Reranking
#
# A bi-encoder embeds queries and passages apart, which makes search over millions of passages cheap
# but misses interactions between their words. A **reranker** looks at each (query, passage) pair of a
# short candidate list and scores it again. This tutorial:
#
# * picks how many candidates to rerank from a **recall-vs-k** plot of the first stage;
# * reranks SciFact's dense top 100 with a second scorer, through `evaluate(..., reranker=...)` and
#   `SearchIndex.search(..., reranker=...)`;
# * **fuses** the two stages' scores, choosing the weight on a validation split (SciFact's train
#   queries), never on test.
#
# bgekit's `Reranker` runs cross-encoders such as `BAAI/bge-reranker-v2-m3`; none ships offline with
# this repository, so the second scorer here is **BM25**, a lexical model whose word-matching signal is
# the one dense retrieval lacks. Anything with `compute_score(pairs)` is a reranker, so the code is the
# same for a cross-encoder (`reranker=Reranker("BAAI/bge-reranker-v2-m3")`).
#
# The SciFact corpus vectors come from the index saved by tutorials 2 and 3 (built here if they did not
# run: 2-3 minutes on an idle 2-core CPU); the rest takes a few minutes.

# %%
import json
import math
import re
import sys
from collections import Counter

import matplotlib
from common import OUT, SCIFACT, IndexedCorpusEncoder, model_path, scifact_index

from bgekit import Embedder
from bgekit.evaluation import compute_metrics, evaluate, load_dataset, read_trec_run
from bgekit.evaluation.search import fuse_scores

if "ipykernel" not in sys.modules:  # a script: draw to files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

model = Embedder(model_path(), show_progress=False)
index = scifact_index(model)
encoder = IndexedCorpusEncoder(model, index)  # see tutorial 2: the index's passage vectors
K_VALUES = [1, 3, 5, 10, 20, 50, 100, 200, 500, 1000]

# %% [markdown]
# ## How many candidates? Recall@k of the first stage
#
# A reranker can only reorder what the first stage found: recall@k of dense retrieval bounds what
# reranking the top k can reach. The curve flattens; reranking more candidates costs time linearly.

# %%
dense = evaluate(encoder, str(SCIFACT), k_values=K_VALUES, output_dir=str(OUT / "eval"), show_progress=False)
first = dense.get("scifact")
recalls = [first.scores[f"recall_at_{k}"] for k in K_VALUES]
for k, r in zip(K_VALUES, recalls, strict=True):
    print(f"recall@{k:<5d} {r:.3f}")
assert round(first.scores["ndcg_at_10"], 4) == 0.6451
assert all(a <= b for a, b in zip(recalls, recalls[1:], strict=False))

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(K_VALUES, recalls, marker="o")
ax.set_xscale("log")
ax.set_xlabel("k (candidates kept)")
ax.set_ylabel("recall@k")
ax.set_title("all-MiniLM-L6-v2 on SciFact test")
ax.axvline(100, color="grey", linestyle=":")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "05_recall_vs_k.png", dpi=100)

# %% [markdown]
# ## A second-stage scorer
#
# BM25 scores a passage by the query words it contains, weighted by their rarity in the corpus (IDF) and
# saturated by term frequency (`k1`) and passage length (`b`). Its statistics come from the whole SciFact
# corpus; it scores pairs as any reranker does.

# %%
TOKEN = re.compile(r"\w+")


class BM25Reranker:
    def __init__(self, corpus_texts, k1=0.9, b=0.4):
        self.k1, self.b = k1, b
        docs = [TOKEN.findall(t.lower()) for t in corpus_texts]
        self.avg_length = sum(map(len, docs)) / len(docs)
        df = Counter(w for d in docs for w in set(d))
        self.idf = {w: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for w, n in df.items()}
        self._terms = {}

    def _passage(self, text):
        if text not in self._terms:
            words = TOKEN.findall(text.lower())
            self._terms[text] = (Counter(words), len(words))
        return self._terms[text]

    def compute_score(self, pairs):
        scores = []
        for query, passage in pairs:
            tf, length = self._passage(passage)
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_length)
            scores.append(
                sum(
                    self.idf.get(w, 0.0) * tf[w] * (self.k1 + 1) / (tf[w] + norm)
                    for w in set(TOKEN.findall(query.lower()))
                    if w in tf
                )
            )
        return scores


with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as handle:
    texts = [f"{d['title']} {d['text']}".strip() for d in map(json.loads, handle)]
bm25 = BM25Reranker(texts)
print(
    bm25.compute_score(
        [
            ("vitamin d and bone fractures", "Vitamin D supplements reduce fractures."),
            ("vitamin d", "Paris is in France."),
        ]
    )
)

# %% [markdown]
# ## Retrieve, then rerank
#
# `evaluate(reranker=..., rerank_top_k=100)` reranks each query's dense top 100 and reports both stages.
# As in FlagEmbedding's evaluator, the reranked list holds only those 100 documents.

# %%
reranked = evaluate(
    encoder, str(SCIFACT), reranker=bm25, rerank_top_k=100, output_dir=str(OUT / "eval"), show_progress=False
)
print(reranked.to_markdown())
rerank_only = reranked.get("scifact", stage="rerank").scores["ndcg_at_10"]

# %% [markdown]
# ## Fusion, with the weight chosen on validation queries
#
# Alone, one stage loses what the other knows. **Fusion** ranks by
# `W * z(rerank score) + (1 - W) * z(retrieval score)`, each standardised within the query
# (`bgekit.evaluation.search.fuse_scores`). We choose `W` on SciFact's 809 *train* queries, then report
# test once.

# %%
weights = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
validation = {}
for w in weights:
    fused = evaluate(
        encoder,
        str(SCIFACT),
        split="train",
        reranker=bm25,
        rerank_top_k=100,
        rerank_fusion_weight=w,
        output_dir=str(OUT / "eval"),
        show_progress=False,
    )
    validation[w] = fused.get("scifact", stage="rerank").scores["ndcg_at_10"]
    print(f"W={w:.1f}: train nDCG@10 {validation[w]:.4f}")
best = max(validation, key=validation.get)
print("chosen W:", best)

test = evaluate(
    encoder,
    str(SCIFACT),
    reranker=bm25,
    rerank_top_k=100,
    rerank_fusion_weight=best,
    output_dir=str(OUT / "eval"),
    show_progress=False,
)
fused_test = test.get("scifact", stage="rerank")
print(
    f"SciFact test nDCG@10: dense {first.scores['ndcg_at_10']:.4f} | BM25 rerank alone {rerank_only:.4f} | fused (W={best}) {fused_test.scores['ndcg_at_10']:.4f}"
)


# %% [markdown]
# The fused figure, recomputed from the first stage's run file: BM25 on each query's top 100, then
# `fuse_scores` and `compute_metrics`.

# %%
dataset = load_dataset(str(SCIFACT), split="test")
retrieval_run = read_trec_run(test.get("scifact", stage="retrieval").run_file)
second_run = {}
for qid, docs in retrieval_run.items():
    top = [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:100]]
    passages = [f"{dataset.corpus[d]['title']} {dataset.corpus[d]['text']}".strip() for d in top]
    second_run[qid] = dict(
        zip(top, bm25.compute_score([(dataset.queries[qid], p) for p in passages]), strict=True)
    )
by_hand = compute_metrics(dataset.qrels, fuse_scores(retrieval_run, second_run, best), k_values=[10])[0][
    "ndcg_at_10"
]
print("fused nDCG@10 recomputed:", round(by_hand, 4))
assert abs(by_hand - fused_test.scores["ndcg_at_10"]) < 1e-4
assert (
    fused_test.scores["ndcg_at_10"] > first.scores["ndcg_at_10"]
)  # the two signals together beat dense alone

# %% [markdown]
# ## The same in a search application
#
# `SearchIndex.search(reranker=..., rerank_top_k=...)` reranks the first `rerank_top_k` hits of each query
# and returns the best `top_k` by the reranker's score; each hit keeps its dense score in
# `retrieval_score`.

# %%
query = "Vitamin D deficiency increases the risk of multiple sclerosis."
for hit in index.search(query, top_k=5, reranker=bm25, rerank_top_k=100):
    print(f"bm25 {hit.score:6.2f}  dense {hit.retrieval_score:.3f}  {hit.title[:70]}")
