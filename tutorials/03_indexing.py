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
# # 3. Indexing
#
# Searching means finding the passages whose vectors have the highest inner product with the query's.
# This tutorial indexes SciFact's 5,183 abstracts with all-MiniLM-L6-v2 and compares:
#
# * **exact** search (faiss `IndexFlatIP`, every vector scored) with a plain numpy product;
# * **approximate** (ANN) structures, IVF and HNSW, by their recall against exact search as their search
#   knob grows (a plot);
# * **quantised** embeddings, int8 and binary, with and without rescoring by the float query;
# * the persistent `SearchIndex`: build, save, load, search, and its nDCG@10 on SciFact test.
#
# The corpus is encoded once (2-3 minutes on an idle 2-core CPU) by whichever of tutorials 2-5 runs first,
# and the index saved under the output folder, where the others find it. 5,183 vectors are few for ANN structures (they pay off past a few
# million); the trade-offs they show are the same.

# %%
import sys
import time

import faiss
import matplotlib
import numpy as np
from common import OUT, SCIFACT, model_path, scifact_index

from bgekit import Embedder
from bgekit.evaluation import compute_metrics, load_dataset
from bgekit.index import SearchIndex
from bgekit.inference.quantize import quantize_embeddings, search_quantized

if "ipykernel" not in sys.modules:  # a script: draw to files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

model = Embedder(model_path(), show_progress=False)
start = time.perf_counter()
index = scifact_index(model)
print(f"{len(index):,} documents, vectors {index.dense.shape}, ready in {time.perf_counter() - start:.1f} s")

dataset = load_dataset(str(SCIFACT), split="test")
query_ids = list(dataset.queries)
query_vectors = model.encode_queries([dataset.queries[q] for q in query_ids])
corpus = index.dense
print(f"{len(query_ids)} test queries")

# %% [markdown]
# ## Exact search
#
# With normalised vectors, the inner product is the cosine. faiss' `IndexFlatIP` scores every vector, as
# a matrix product does, but in optimised, multi-threaded kernels.

# %%
flat = faiss.IndexFlatIP(corpus.shape[1])
flat.add(corpus)
exact_scores, exact_ids = flat.search(query_vectors, 10)
brute = query_vectors @ corpus.T
numpy_ids = np.argsort(-brute, axis=1, kind="stable")[:, :10]
assert np.allclose(exact_scores, np.take_along_axis(brute, numpy_ids, axis=1), atol=1e-5)
print(
    "faiss exact top-10 == numpy top-10 for",
    int((exact_ids == numpy_ids).all(axis=1).sum()),
    "of",
    len(query_ids),
    "queries",
)


def run_of(ids, scores):
    return {
        query_ids[i]: {index.ids[j]: float(s) for j, s in zip(ids[i], scores[i], strict=True) if j >= 0}
        for i in range(len(query_ids))
    }


def ndcg10(ids, scores):
    return compute_metrics(dataset.qrels, run_of(ids, scores), k_values=[10])[0]["ndcg_at_10"]


def recall_vs_exact(ids):
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids, strict=True)]))


exact_ndcg = ndcg10(exact_ids, exact_scores)
print("exact nDCG@10:", round(exact_ndcg, 4))

# %% [markdown]
# ## Approximate structures and their recall
#
# **IVF** clusters the vectors (k-means, `nlist` lists) and searches only the `nprobe` lists closest to the
# query; **HNSW** walks a graph of neighbours, keeping `ef_search` candidates. Both trade recall for speed.
# `SearchIndex(ann=...)` builds them from the vectors it keeps, asks them for candidates and ranks those by
# their exact inner products; `index.recall` measures recall@10 against exact search.

# %%
curves = {}
for ann, knob, values in (
    ("ivf", "nprobe", [1, 2, 4, 8, 16, 32]),
    ("hnsw", "ef_search", [10, 16, 32, 64, 128]),
):
    approx = SearchIndex(model, index.ids, index.documents, corpus, None, ann=ann)
    print(ann, approx.ann)
    curves[ann] = [(v, approx.recall(query_vectors, k=10, **{knob: v})) for v in values]
    for v, r in curves[ann]:
        print(f"  {knob}={v:4d}: recall@10 {r:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, (ann, knob) in zip(axes, (("ivf", "nprobe"), ("hnsw", "ef_search")), strict=True):
    xs, ys = zip(*curves[ann], strict=True)
    ax.plot(xs, ys, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(knob)
    ax.set_title(f"{ann}: recall@10 vs exact")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("recall@10")
fig.tight_layout()
fig.savefig(OUT / "03_ann_recall.png", dpi=100)

ivf = dict(curves["ivf"])
assert ivf[32] >= ivf[1] and ivf[32] > 0.95  # more lists searched, more of the exact top 10 found
assert max(r for _, r in curves["hnsw"]) > 0.95

# %% [markdown]
# ## Quantised embeddings: int8 and binary, with rescoring
#
# A float32 vector of 384 dimensions takes 1,536 bytes. **int8** maps each dimension to 256 buckets
# (ranges from calibration vectors): 384 bytes. **binary** keeps the sign of each dimension: 48 bytes,
# searched by Hamming distance. Both lose some ranking quality; **rescoring** (fetch `k x multiplier`
# candidates with the quantised vectors, then rank them by the float query against the candidates' stored
# vectors) buys most of it back. The functions follow sentence-transformers' conventions.

# %%
calibration = corpus[:1000]  # int8 bucket ranges from a sample of the corpus
int8_ranges = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
rows = []
for precision in ("int8", "binary"):
    kwargs = {"ranges": int8_ranges} if precision == "int8" else {}
    stored = quantize_embeddings(corpus, precision, **kwargs)
    for rescore in (False, True):
        scores, ids = search_quantized(
            query_vectors, stored, precision, top_k=10, rescore=rescore, rescore_multiplier=4, **kwargs
        )
        rows.append((precision, rescore, stored.nbytes, recall_vs_exact(ids), ndcg10(ids, scores)))
print(f"{'precision':10s} {'rescore':8s} {'bytes':>10s} {'recall@10':>10s} {'nDCG@10':>8s}")
print(f"{'float32':10s} {'-':8s} {corpus.nbytes:10,d} {1.0:10.3f} {exact_ndcg:8.4f}")
for precision, rescore, nbytes, rec, nd in rows:
    print(f"{precision:10s} {str(rescore):8s} {nbytes:10,d} {rec:10.3f} {nd:8.4f}")
by = {(p, r): (rec, nd) for p, r, _, rec, nd in rows}
assert by[("binary", True)][0] > by[("binary", False)][0]  # rescoring recovers recall
assert by[("int8", True)][0] > 0.9 and abs(by[("int8", True)][1] - exact_ndcg) < 0.01

# %% [markdown]
# ## The persistent `SearchIndex`
#
# `SearchIndex` keeps the vectors together with the texts, so a search returns passages, not row
# numbers. It saves to a folder (atomically) and reopens with the model that built it. Its dense search is
# exact and gives SciFact's published nDCG@10 for this model, 0.6451.

# %%
hits = index.search("Vitamin D deficiency is linked to multiple sclerosis.", top_k=3)
for hit in hits:
    print(f"{hit.score:.3f}  {hit.id}  {hit.title[:70]}")

results = index.search([dataset.queries[q] for q in query_ids], top_k=1000)
index_run = {q: {h.id: h.score for h in found} for q, found in zip(query_ids, results, strict=True)}
index_ndcg = compute_metrics(dataset.qrels, index_run, k_values=[10])[0]["ndcg_at_10"]
print("SearchIndex nDCG@10 on SciFact test:", round(index_ndcg, 4))
assert round(index_ndcg, 4) == 0.6451
assert abs(index_ndcg - exact_ndcg) < 1e-3

small = SearchIndex.build(
    model,
    [{"_id": "a", "text": "Pandas eat bamboo."}, {"_id": "b", "text": "Rust is a programming language."}],
)
small.save(str(OUT / "03-small-index"))
reopened = SearchIndex.load(str(OUT / "03-small-index"), embedder=model)
assert [h.id for h in reopened.search("what do pandas eat?", top_k=2)] == ["a", "b"]
print("saved and reopened:", reopened.search("what do pandas eat?", top_k=1)[0].text)
