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
# # 4. Evaluation
#
# How good is an embedder on *your* retrieval task? `bgekit.evaluation.evaluate` answers it the way BEIR
# and MTEB do: encode the corpus, search every judged query exactly, score the ranking with pytrec_eval.
# This tutorial runs it on BEIR SciFact end to end (and gets MTEB's published 0.6451 nDCG@10 for
# all-MiniLM-L6-v2), on a dataset of your own written in the BEIR layout, and on XQuAD with two settings
# of the model side by side in one report and plot; then it shows the adapter that lets mteb call a bgekit
# model.
#
# SciFact's corpus vectors come from the index saved by tutorials 2 and 3 (built here if they did not
# run: 2-3 minutes on an idle 2-core CPU).

# %%
import json
import shutil
import sys
import time

import numpy as np
from common import DATA, OUT, SCIFACT, IndexedCorpusEncoder, model_path, scifact_index

from bgekit import Embedder
from bgekit.evaluation import compute_metrics, evaluate, load_dataset
from bgekit.evaluation.mteb_adapter import MTEBEncoder

MODEL = model_path()

# %% [markdown]
# ## BEIR SciFact, end to end
#
# A BEIR folder holds `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`. Only queries judged in the
# split are evaluated (300 for SciFact test). The output folder gets a cache, a TREC run file per stage,
# `report.md`, `report.json` and `recall_at_k.png`. `evaluate(MODEL, ...)` with the model's path encodes
# the corpus itself (the command line below does); here the passages are answered from the saved SciFact
# index (`IndexedCorpusEncoder`: same model, same settings), so the tutorials encode them only once.
#
# ```bash
# bgekit eval --model PATH --dataset ../shared/data/scifact --split test --output-dir results/
# ```

# %%
start = time.perf_counter()
model = Embedder(MODEL, show_progress=False)
encoder = IndexedCorpusEncoder(model, scifact_index(model))
result = evaluate(
    encoder,
    str(SCIFACT),
    split="test",
    output_dir=str(OUT / "eval"),
    model_name="all-MiniLM-L6-v2",
    show_progress=False,
)
scifact = result.get("scifact")
print(f"{time.perf_counter() - start:.1f} s")
print(result.to_markdown())
assert round(scifact.scores["ndcg_at_10"], 4) == 0.6451  # MTEB's published figure for this model
assert scifact.num_queries == 300 and scifact.num_documents == 5183

report = json.loads((OUT / "eval" / "report.json").read_text())
print("report.json keys:", sorted(report)[:8])
print("main score:", scifact.main_score_name, round(scifact.main_score, 4))

# %% [markdown]
# The same with the model given as an object: any object with `encode_queries` and `encode_corpus` can
# be evaluated. Here the real `Embedder` at 512 tokens instead of the 256 of its
# `sentence_bert_config.json`; MTEB ran at 256, which is why the defaults follow the model's own files.
# (Re-encoding the corpus at 512 tokens takes several minutes, so we only show the call.)
#
# ```python
# evaluate(Embedder(MODEL, passage_max_length=512), str(SCIFACT))   # nDCG@10 0.6541
# ```

# %% [markdown]
# ## Your own data in BEIR layout
#
# Write three files and evaluate the folder. Here a tiny set about animals; the figures are checked
# against a search done by hand with numpy and scored by `compute_metrics`.

# %%
mine = OUT / "my-dataset"
shutil.rmtree(mine, ignore_errors=True)
(mine / "qrels").mkdir(parents=True)
corpus = {
    "d1": ("Giant panda", "The giant panda is a bear that eats bamboo almost exclusively."),
    "d2": ("Red panda", "The red panda is a small mammal of the eastern Himalayas."),
    "d3": ("Koala", "Koalas are marsupials that feed on eucalyptus leaves."),
    "d4": ("Polar bear", "The polar bear hunts seals on the Arctic sea ice."),
    "d5": ("Emperor penguin", "Emperor penguins breed during the Antarctic winter."),
    "d6": ("Python", "Python is a programming language that emphasises readability."),
}
queries = {"q1": "what do pandas eat?", "q2": "which animals live near the poles?", "q3": "eucalyptus diet"}
qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d4": 1, "d5": 1}, "q3": {"d3": 1}}
with open(mine / "corpus.jsonl", "w", encoding="utf-8") as handle:
    for did, (title, text) in corpus.items():
        handle.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
with open(mine / "queries.jsonl", "w", encoding="utf-8") as handle:
    for qid, text in queries.items():
        handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
with open(mine / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
    handle.write("query-id\tcorpus-id\tscore\n")
    for qid, docs in qrels.items():
        for did, rel in docs.items():
            handle.write(f"{qid}\t{did}\t{rel}\n")

own = evaluate(MODEL, str(mine), output_dir=str(OUT / "eval-mine"), overwrite=True, show_progress=False)
own_scores = own.get("my-dataset").scores
print({k: round(own_scores[k], 4) for k in ("ndcg_at_1", "ndcg_at_3", "recall_at_3", "mrr_at_10")})

doc_ids = list(corpus)
p = model.encode_corpus([{"title": t, "text": x} for t, x in corpus.values()])
q = model.encode_queries(list(queries.values()))
by_hand = {
    qid: {did: float(s) for did, s in zip(doc_ids, row, strict=True)}
    for qid, row in zip(queries, q @ p.T, strict=True)
}
reference, _ = compute_metrics(qrels, by_hand, k_values=[1, 3, 10])
for name in ("ndcg_at_1", "ndcg_at_3", "recall_at_3", "mrr_at_10"):
    assert abs(own_scores[name] - reference[name]) < 1e-6, name

# %% [markdown]
# ## Two settings compared: report and plot
#
# `evaluate` takes a list of models (and of datasets). On XQuAD (English; 1,187 questions over 240
# Wikipedia paragraphs) we compare the full 384-dimensional model with its first 128 dimensions
# (Matryoshka truncation, see tutorial 1). `recall_at_k.png` draws Recall@k for both.

# %%
small = Embedder(MODEL, truncate_dim=128, show_progress=False)
both = evaluate(
    [model, small],
    str(DATA / "xquad-en"),
    model_name=["MiniLM 384d", "MiniLM 128d"],
    output_dir=str(OUT / "eval-xquad"),
    overwrite=True,
    show_progress=False,
)
print(both.to_markdown())
full_ndcg = both.get("xquad-en", model="MiniLM 384d").scores["ndcg_at_10"]
cut_ndcg = both.get("xquad-en", model="MiniLM 128d").scores["ndcg_at_10"]
assert full_ndcg > cut_ndcg  # MiniLM was not trained for truncation: 128 dimensions lose quality
assert (OUT / "eval-xquad" / "recall_at_k.png").is_file()

if "ipykernel" in sys.modules:
    from IPython.display import Image, display

    display(Image(filename=str(OUT / "eval-xquad" / "recall_at_k.png")))

# %% [markdown]
# The same from the command line:
#
# ```bash
# bgekit eval --model PATH --dataset ../shared/data/xquad-en --output-dir results/
# ```

# %% [markdown]
# ## The MTEB adapter
#
# mteb calls `model.encode(sentences, task_name=..., prompt_type="query" | "passage")` (1.x) or with a
# `DataLoader` and `PromptType` (2.x). `MTEBEncoder` answers both with the embedder's query and passage
# settings, so `mteb.evaluate(MTEBEncoder(Embedder(...)), tasks)` scores a bgekit model with mteb's own
# evaluator. mteb is not installed here (its tasks download data from the hub), so we check the adapter's
# answers against the embedder directly.

# %%
encoder = MTEBEncoder(model, query_instructions={"SciFact": "claim: "})
as_query = encoder.encode(["Vitamin D prevents fractures."], task_name="SciFact", prompt_type="query")
as_passage = encoder.encode(["Vitamin D prevents fractures."], task_name="SciFact", prompt_type="passage")
assert np.allclose(as_query, model.encode(["claim: Vitamin D prevents fractures."]), atol=1e-6)
assert np.allclose(as_passage, model.encode_corpus(["Vitamin D prevents fractures."]), atol=1e-6)
print(
    "query and passage sides differ by the instruction; cosine:", round(float(as_query[0] @ as_passage[0]), 4)
)
dataset = load_dataset(str(SCIFACT), split="test")
print(f"SciFact test through load_dataset: {len(dataset.queries)} queries, {len(dataset.corpus)} documents")
