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
# # 7. Retrieval-augmented generation (RAG)
#
# RAG answers a question with a language model that is given passages retrieved for it, and cites them.
# The retrieval side is what bgekit does:
#
# 1. **chunk** long documents into passages the embedder can read whole (its limit is 256 tokens here);
# 2. **index** the chunks, **retrieve** candidates and **rerank** them;
# 3. **assemble a prompt** with numbered sources, so the answer can cite them;
# 4. serve retrieval over HTTP with `bgekit serve` (a real server process on 127.0.0.1 here) and call it
#    with `httpx` and the `openai` client;
# 5. **generate** through any OpenAI-compatible endpoint: only when `OPENAI_BASE_URL` is set (with
#    `OPENAI_API_KEY` and `OPENAI_MODEL`); otherwise that step prints a note and is skipped.
#
# Data: the 240 English XQuAD paragraphs (Wikipedia), joined five at a time into 48 longer documents to
# have something to chunk, and the first 200 of its 1,187 questions (a subset, to keep the tutorial at
# about a minute on 2 CPU cores).

# %%
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import numpy as np
from common import DATA, OUT, model_path
from openai import OpenAI

from bgekit import Embedder
from bgekit.index import SearchIndex

model = Embedder(model_path(), show_progress=False)
XQUAD = DATA / "xquad-en"
with open(XQUAD / "corpus.jsonl", encoding="utf-8") as handle:
    paragraphs = [json.loads(line) for line in handle]
with open(XQUAD / "queries.jsonl", encoding="utf-8") as handle:
    questions = [json.loads(line) for line in handle][:200]
gold = {}
with open(XQUAD / "qrels" / "test.tsv", encoding="utf-8") as handle:
    next(handle)
    for line in handle:
        qid, pid, _ = line.split()
        gold[qid] = pid

# documents of 5 paragraphs; remember where each paragraph sits, to judge chunks later
documents, spans = [], {}
for start in range(0, len(paragraphs), 5):
    text, doc_id = "", f"doc{start // 5:02d}"
    for paragraph in paragraphs[start : start + 5]:
        spans[paragraph["_id"]] = (doc_id, len(text), len(text) + len(paragraph["text"]))
        text += paragraph["text"] + "\n\n"
    documents.append({"_id": doc_id, "text": text.strip()})
lengths = [len(model.tokenizer(d["text"])["input_ids"]) for d in documents]
print(
    f"{len(documents)} documents, {min(lengths)}-{max(lengths)} tokens: longer than the model's 256, so they must be chunked"
)

# %% [markdown]
# ## Chunking
#
# Split on sentence ends, then pack whole sentences into chunks of at most 128 tokens (counted with the
# model's own tokenizer), carrying the last sentence of a chunk over into the next (overlap), so that a
# fact cut at a boundary is whole in one of the two. Each chunk remembers its document and character span.

# %%
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunk(document, max_tokens=128, overlap=1):
    text = document["text"]
    sentences, position = [], 0
    for piece in SENTENCE_END.split(text):
        begin = text.index(piece, position)
        sentences.append((begin, begin + len(piece)))
        position = begin + len(piece)
    chunks, current = [], []
    for sentence in sentences:
        candidate = current + [sentence]
        if (
            current
            and len(model.tokenizer(text[candidate[0][0] : candidate[-1][1]])["input_ids"]) > max_tokens
        ):
            chunks.append(current)
            current = current[-overlap:] + [sentence] if overlap else [sentence]
        else:
            current = candidate
    chunks.append(current)
    return [
        {
            "_id": f"{document['_id']}-{i}",
            "title": document["_id"],
            "text": text[c[0][0] : c[-1][1]],
            "start": c[0][0],
            "end": c[-1][1],
        }
        for i, c in enumerate(chunks)
    ]


chunks = [c for d in documents for c in chunk(d)]
chunk_tokens = [len(model.tokenizer(c["text"])["input_ids"]) for c in chunks]
print(
    f"{len(chunks)} chunks, tokens per chunk: median {int(np.median(chunk_tokens))}, max {max(chunk_tokens)}"
)
assert (
    max(chunk_tokens) <= 256
)  # one sentence longer than 128 tokens would make a larger chunk; none exceeds the model's limit

# %% [markdown]
# ## Index, retrieve, rerank
#
# The chunks go into a `SearchIndex` (saved, for the server below). A chunk answers a question when it
# overlaps the paragraph XQuAD marks as the answer's; **hit@k** is the share of questions with such a
# chunk in their top k. The reranker is BM25 over the chunks, as in tutorial 5 (a cross-encoder such as
# `bgekit.Reranker("BAAI/bge-reranker-v2-m3")` plugs in the same way).

# %%
index = SearchIndex.build(model, [{"_id": c["_id"], "text": c["text"]} for c in chunks], show_progress=False)
index.save(str(OUT / "rag-index"))
by_id = {c["_id"]: c for c in chunks}


def answers(question_id, hit_id):
    doc_id, begin, end = spans[gold[question_id]]
    c = by_id[hit_id]
    return c["title"] == doc_id and c["start"] < end and c["end"] > begin


TOKEN = re.compile(r"\w+")


class BM25Reranker:
    def __init__(self, texts, k1=0.9, b=0.4):
        self.k1, self.b = k1, b
        docs = [TOKEN.findall(t.lower()) for t in texts]
        self.avg = sum(map(len, docs)) / len(docs)
        df = Counter(w for d in docs for w in set(d))
        self.idf = {w: np.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for w, n in df.items()}

    def compute_score(self, pairs):
        out = []
        for query, passage in pairs:
            words = TOKEN.findall(passage.lower())
            tf, norm = Counter(words), self.k1 * (1 - self.b + self.b * len(words) / self.avg)
            out.append(
                float(
                    sum(
                        self.idf.get(w, 0) * tf[w] * (self.k1 + 1) / (tf[w] + norm)
                        for w in set(TOKEN.findall(query.lower()))
                        if w in tf
                    )
                )
            )
        return out


reranker = BM25Reranker([c["text"] for c in chunks])
texts = [q["text"] for q in questions]
dense_hits = index.search(texts, top_k=20)
reranked_hits = index.search(texts, top_k=20, reranker=reranker, rerank_top_k=20)
for name, results in (("dense", dense_hits), ("dense top 20, BM25 rerank", reranked_hits)):
    hit_at = {
        k: np.mean(
            [
                any(answers(q["_id"], h.id) for h in hits[:k])
                for q, hits in zip(questions, results, strict=True)
            ]
        )
        for k in (1, 3, 20)
    }
    print(f"{name:28s} hit@1 {hit_at[1]:.3f}  hit@3 {hit_at[3]:.3f}  hit@20 {hit_at[20]:.3f}")
    if name == "dense":
        dense_hit_at = hit_at
assert dense_hit_at[3] > 0.8  # XQuAD questions are paraphrases of one paragraph: dense retrieval finds most

# %% [markdown]
# ## A prompt with citations
#
# The prompt numbers the retrieved chunks and asks the model to cite them as `[n]`; the numbers map back to
# chunk ids, so the application can show where each claim came from.

# %%
question = questions[0]["text"]
sources = index.search(question, top_k=3, reranker=reranker, rerank_top_k=20)
context = "\n\n".join(f"[{i}] ({hit.id}) {hit.text}" for i, hit in enumerate(sources, start=1))
prompt = (
    "Answer the question using only the sources below. Cite the sources you use as [n]. "
    "If they do not contain the answer, say so.\n\n"
    f"Sources:\n{context}\n\nQuestion: {question}\nAnswer:"
)
print(prompt)
citations = {f"[{i}]": hit.id for i, hit in enumerate(sources, start=1)}
assert all(f"[{i}] ({hit.id})" in prompt for i, hit in enumerate(sources, start=1))

# %% [markdown]
# ## Retrieval over HTTP: `bgekit serve`
#
# `bgekit serve --index rag-index` loads the index (and its model) and answers `POST /search`, and the
# OpenAI-compatible `POST /v1/embeddings`. We start it as a subprocess on a free port of 127.0.0.1, wait
# for `/health`, and check that its answers equal the library's.

# %%
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(
    [
        sys.executable,
        "-m",
        "bgekit.cli.main",
        "serve",
        "--index",
        str(OUT / "rag-index"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
)
base = f"http://127.0.0.1:{port}"
try:
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"bgekit serve exited with {server.returncode}: {server.stderr.read()[-2000:]}"
            )
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("bgekit serve did not become healthy in 300 s")
        time.sleep(1)

    response = httpx.post(f"{base}/search", json={"query": question, "top_k": 3}, timeout=60)
    response.raise_for_status()
    served = response.json()["results"][0]["hits"]
    local = index.search(question, top_k=3)
    print([(h["id"], round(h["score"], 4)) for h in served])
    assert [h["id"] for h in served] == [h.id for h in local]
    assert np.allclose([h["score"] for h in served], [h.score for h in local], atol=1e-4)

    client = OpenAI(base_url=f"{base}/v1", api_key="unused-on-loopback")
    vector = client.embeddings.create(model="bge", input=[question]).data[0].embedding
    cosine = float(np.dot(vector, model.encode_queries([question])[0]))
    print("embedding through the openai client, cosine to the library's:", round(cosine, 6))
    assert cosine > 0.99999
finally:
    server.terminate()
    server.wait(timeout=60)

# %% [markdown]
# ## Generation (only with an endpoint)
#
# Any OpenAI-compatible chat endpoint (a hosted API, vLLM, llama.cpp's server, Ollama ...) answers the
# prompt. Set `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `OPENAI_MODEL` to run this step.

# %%
if os.environ.get("OPENAI_BASE_URL"):
    llm = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    reply = llm.chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
    )
    answer = reply.choices[0].message.content or ""
    print(answer)
    print("cited:", {c: citations[c] for c in citations if c in answer})
else:
    print("OPENAI_BASE_URL is not set: generation skipped. The prompt above is what would be sent.")
