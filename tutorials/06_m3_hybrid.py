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
# # 6. BGE-M3 style hybrid retrieval: dense, sparse and multi-vector
#
# BGE-M3 gives three representations from **one** pass through its encoder:
#
# * **dense**: the CLS token's vector, normalised (as in tutorial 1);
# * **sparse** (lexical): one weight per input token, `relu(w . h_token)`, keeping each token id's largest
#   weight: a learned bag of words, matched like BM25 by the tokens query and passage share;
# * **multi-vector** (ColBERT): one normalised vector per token; a query token is matched to its most
#   similar passage token (*MaxSim*) and the matches are averaged.
#
# The real `BAAI/bge-m3` is 2.2 GB and needs a download, so this tutorial assembles a **small M3** the
# way bgekit's tests build their tiny one: an encoder folder plus the two head files that make it an M3
# checkpoint, `colbert_linear.pt` and `sparse_linear.pt`. Here the encoder is the real all-MiniLM-L6-v2,
# the ColBERT head is the identity (MiniLM's own token vectors) and the sparse head is fitted in closed
# form (ridge regression on MiniLM's token vectors) to predict each token's IDF over XQuAD's paragraphs,
# so its lexical weights mean something: rare words weigh more than common ones. BGE-M3 learns its heads
# by training instead; everything downstream (scores, `SearchIndex`, rescoring) is the same code as with
# `Embedder("BAAI/bge-m3")`.
#
# Runs in about a minute on 2 CPU cores.

# %%
import json
import shutil

import numpy as np
import torch
from common import DATA, OUT, model_path
from transformers import AutoModel, AutoTokenizer

from bgekit import Embedder
from bgekit.index import M3Rescorer, SearchIndex

with open(DATA / "xquad-en" / "corpus.jsonl", encoding="utf-8") as handle:
    corpus = [json.loads(line) for line in handle]

folder = OUT / "small-m3"
shutil.rmtree(folder, ignore_errors=True)
shutil.copytree(model_path(), folder, ignore=shutil.ignore_patterns("onnx", "*.onnx"))
tokenizer = AutoTokenizer.from_pretrained(folder)
backbone = AutoModel.from_pretrained(folder).eval()
special = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}

# token vectors of the XQuAD paragraphs, and each token's IDF over the paragraphs
# (the regression is fitted on the first 100 paragraphs' tokens, to keep this step short)
vectors, token_ids, document_frequency = [], [], np.zeros(tokenizer.vocab_size)
for i, row in enumerate(corpus):
    batch = tokenizer(row["text"], truncation=True, max_length=256, return_tensors="pt")
    document_frequency[np.unique(batch["input_ids"][0].numpy())] += 1
    if i < 100:
        with torch.no_grad():
            vectors.append(backbone(**batch).last_hidden_state[0].numpy())
        token_ids.append(batch["input_ids"][0].numpy())
X, ids = np.concatenate(vectors), np.concatenate(token_ids)
idf = np.log((len(corpus) + 1) / (document_frequency + 0.5))
target = idf[ids] / idf.max()
X_mean, y_mean = X.mean(axis=0), target.mean()
w = np.linalg.solve(
    (X - X_mean).T @ (X - X_mean) + 10.0 * np.eye(X.shape[1]), (X - X_mean).T @ (target - y_mean)
)

hidden = backbone.config.hidden_size
colbert_head = torch.nn.Linear(hidden, hidden)
sparse_head = torch.nn.Linear(hidden, 1)
with torch.no_grad():
    colbert_head.weight.copy_(torch.eye(hidden))
    colbert_head.bias.zero_()
    sparse_head.weight.copy_(torch.from_numpy(w).float()[None, :])
    sparse_head.bias.fill_(float(y_mean - X_mean @ w))
torch.save(colbert_head.state_dict(), folder / "colbert_linear.pt")
torch.save(sparse_head.state_dict(), folder / "sparse_linear.pt")
fitted = X @ w + (y_mean - X_mean @ w)
print(
    f"sparse head fitted on {len(X):,} token vectors: correlation with scaled IDF {np.corrcoef(fitted, target)[0, 1]:.3f}"
)

m3 = Embedder(str(folder), show_progress=False)
print("pooling:", m3.settings.pooling, "| ColBERT dim:", m3.colbert_dim)

# %% [markdown]
# ## Three outputs from one pass
#
# For an M3 checkpoint `encode*` returns a dict with FlagEmbedding's keys.

# %%
passages = [
    "The giant panda eats bamboo in the mountains of China.",
    "Polar bears hunt seals on the Arctic sea ice.",
    "Bamboo is a fast-growing grass.",
]
query = "what do pandas eat?"
p = m3.encode_corpus(passages, return_dense=True, return_sparse=True, return_colbert_vecs=True)
q = m3.encode_queries([query], return_dense=True, return_sparse=True, return_colbert_vecs=True)
print("dense:", p["dense_vecs"].shape, "| ColBERT of passage 0:", p["colbert_vecs"][0].shape)
print("lexical weights of the query:", m3.convert_id_to_token(q["lexical_weights"])[0])

# %% [markdown]
# ## The lexical weights, by hand
#
# Run the encoder, apply the sparse head and a ReLU to every token's hidden state, keep for each token id
# its largest weight, and leave out zeros and the tokens FlagEmbedding leaves out: the CLS, EOS, padding
# and unknown tokens. (BGE-M3's XLM-R tokenizer ends a text with its EOS, `</s>`; this BERT tokenizer
# has no EOS, so its closing `[SEP]` keeps a weight.) The query is truncated to the query limit first.

# %%
batch = tokenizer([query], truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad():
    hidden = backbone(**batch).last_hidden_state[0]
    weights = torch.relu(sparse_head(hidden)).squeeze(-1)
by_hand = {}
for token_id, weight in zip(batch["input_ids"][0].tolist(), weights.tolist(), strict=True):
    if token_id not in special and weight > 0:
        by_hand[str(token_id)] = max(weight, by_hand.get(str(token_id), 0.0))
assert by_hand.keys() == q["lexical_weights"][0].keys()
assert all(abs(by_hand[t] - q["lexical_weights"][0][t]) < 1e-5 for t in by_hand)
print("by hand == bgekit for", len(by_hand), "tokens")

# %% [markdown]
# ## Three scores, by hand
#
# * sparse: the sum, over tokens in both, of query weight x passage weight;
# * ColBERT: for each query token, the best inner product with a passage token, averaged over query tokens;
# * dense: the inner product of the two normalised vectors.
#
# `compute_score` scores pairs with all three and their weighted combinations
# (`weights_for_different_modes=[dense, sparse, colbert]`, the model card's `[0.4, 0.2, 0.4]`).

# %%
lexical = [sum(w * lw.get(t, 0.0) for t, w in q["lexical_weights"][0].items()) for lw in p["lexical_weights"]]
colbert = [float((q["colbert_vecs"][0] @ pv.T).max(axis=1).mean()) for pv in p["colbert_vecs"]]
dense = (p["dense_vecs"] @ q["dense_vecs"][0]).tolist()
for i in range(len(passages)):
    assert (
        abs(lexical[i] - m3.compute_lexical_matching_score(q["lexical_weights"][0], p["lexical_weights"][i]))
        < 1e-5
    )
    assert abs(colbert[i] - m3.colbert_score(q["colbert_vecs"][0], p["colbert_vecs"][i])) < 1e-5

scores = m3.compute_score([(query, x) for x in passages], weights_for_different_modes=[0.4, 0.2, 0.4])
for i, text in enumerate(passages):
    combined = (0.4 * scores["dense"][i] + 0.2 * scores["sparse"][i] + 0.4 * scores["colbert"][i]) / 1.0
    assert abs(scores["colbert+sparse+dense"][i] - combined) < 1e-5
    print(
        f"dense {scores['dense'][i]:.3f} sparse {scores['sparse'][i]:.3f} colbert {scores['colbert'][i]:.3f}  {text}"
    )

# %% [markdown]
# `sparse_format="csr"` returns all lexical weights as one `scipy.sparse` matrix (one column per
# vocabulary entry): one sparse product then scores every query against every passage, which is how an
# inverted index or `SearchIndex` scores them in bulk.

# %%
q_csr = m3.encode_queries([query], return_dense=False, return_sparse=True, sparse_format="csr")[
    "lexical_weights"
]
p_csr = m3.encode_corpus(passages, return_dense=False, return_sparse=True, sparse_format="csr")[
    "lexical_weights"
]
assert np.allclose((q_csr @ p_csr.T).toarray()[0], lexical, atol=1e-5)
print("CSR shape:", p_csr.shape, "non-zeros per passage:", np.diff(p_csr.indptr).tolist())

# %% [markdown]
# ## Dense, sparse and hybrid search with `SearchIndex`
#
# An index built with an M3 model keeps the dense vectors and the lexical weights. `mode="hybrid"` (the
# default for M3) ranks by `1.0 * dense + 0.3 * sparse` over every document; `weights=` chooses others.
# ColBERT vectors are not stored (one per token); `M3Rescorer` reranks the candidates with all three
# scores from one pass. We index the 240 XQuAD paragraphs and ask one of XQuAD's questions.

# %%
index = SearchIndex.build(m3, corpus, show_progress=False)
print(len(index), "documents, modes:", index.modes)
question = "How many points did the Panthers defense surrender?"
for mode in ("dense", "sparse", "hybrid"):
    top = index.search(question, top_k=3, mode=mode)
    print(f"{mode:7s}", [(h.id, round(h.score, 3)) for h in top])

hybrid = index.search(question, top_k=1, mode="hybrid")[0]
dense_all = {h.id: h.score for h in index.search(question, top_k=len(index), mode="dense")}
sparse_all = {h.id: h.score for h in index.search(question, top_k=len(index), mode="sparse")}
expected = dense_all[hybrid.id] + 0.3 * sparse_all.get(hybrid.id, 0.0)
assert abs(hybrid.score - expected) < 1e-4
best_by_hand = max(dense_all, key=lambda d: dense_all[d] + 0.3 * sparse_all.get(d, 0.0))
assert best_by_hand == hybrid.id
print("hybrid top hit", hybrid.id, "score", round(hybrid.score, 4), "= dense + 0.3 x sparse")

# XQuAD's judgment for this question: adding the lexical match brings the judged
# paragraph to the top, which dense search alone ranks second
with open(DATA / "xquad-en" / "qrels" / "test.tsv", encoding="utf-8") as handle:
    gold = {line.split()[0]: line.split()[1] for line in list(handle)[1:]}
with open(DATA / "xquad-en" / "queries.jsonl", encoding="utf-8") as handle:
    question_id = next(row["_id"] for row in map(json.loads, handle) if row["text"] == question)
dense_rank = [h.id for h in index.search(question, top_k=10, mode="dense")].index(gold[question_id]) + 1
print(f"the judged paragraph: rank {dense_rank} by dense search, rank 1 by hybrid search")
assert hybrid.id == gold[question_id]

rescored = index.search(question, top_k=3, reranker=M3Rescorer(m3), rerank_top_k=20)
print("M3 rescoring (colbert+sparse+dense):", [(h.id, round(h.score, 3)) for h in rescored])
