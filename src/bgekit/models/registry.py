"""The table of published checkpoints: settings to use when a model folder does not say them itself.

This is a fallback only. A folder's own ``bgekit.json`` or sentence-transformers configuration wins over
it, and explicit arguments win over everything.
"""

from __future__ import annotations

from typing import Any

BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
"""The query instruction of BAAI's English bge models (v1 and v1.5), for retrieval."""
_BGE_ZH = "为这个句子生成表示以用于检索相关文章："
_WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query."
# e5-mistral, Qwen3-Embedding, gte-Qwen2, SFR and Linq write the task without the final period
_WEB_SEARCH_E5 = "Given a web search query, retrieve relevant passages that answer the query"


_TABLE: dict[str, dict[str, Any]] = {}


def _add(names: list[str], **settings: Any) -> None:
    for name in names:
        _TABLE[name.lower()] = dict(settings)


_add(
    [f"BAAI/bge-{size}-en{v}" for size in ("small", "base", "large") for v in ("", "-v1.5")],
    pooling="cls",
    normalize=True,
    query_instruction=BGE_EN_QUERY_INSTRUCTION,
    query_max_length=512,
    passage_max_length=512,
)
_add(
    [f"BAAI/bge-{size}-zh{v}" for size in ("small", "base", "large") for v in ("", "-v1.5")],
    pooling="cls",
    normalize=True,
    query_instruction=_BGE_ZH,
    query_max_length=512,
    passage_max_length=512,
)
_add(["BAAI/bge-large-zh-noinstruct"], pooling="cls", normalize=True)
_add(
    ["BAAI/bge-m3"],
    kind="m3",
    pooling="cls",
    normalize=True,
    query_max_length=8192,
    passage_max_length=8192,
)
_add(
    ["BAAI/bge-multilingual-gemma2"],
    kind="decoder",
    pooling="last_token",
    normalize=True,
    query_instruction=_WEB_SEARCH,
    query_instruction_format="<instruct>{}\n<query>{}",
    dtype="bf16",
)
_add(
    ["BAAI/bge-en-icl"],
    kind="icl",
    pooling="last_token",
    normalize=True,
    query_instruction=_WEB_SEARCH,
    query_instruction_format="<instruct>{}\n<query>{}",
    dtype="bf16",
    append_eos=True,  # FlagICLModel budgets a final </s>; a no-op where the tokenizer adds it
)
_add(
    [f"intfloat/e5-{size}-v2" for size in ("small", "base", "large")]
    + [f"intfloat/multilingual-e5-{size}" for size in ("small", "base", "large")],
    pooling="mean",
    normalize=True,
    query_instruction="query: ",
    passage_instruction="passage: ",
    query_max_length=512,
    passage_max_length=512,
)
_add(
    [
        "intfloat/e5-mistral-7b-instruct",
        "Salesforce/SFR-Embedding-Mistral",
        "Salesforce/SFR-Embedding-2_R",
        "Linq-AI-Research/Linq-Embed-Mistral",
    ],
    kind="decoder",
    pooling="last_token",
    normalize=True,
    query_instruction=_WEB_SEARCH_E5,
    query_instruction_format="Instruct: {}\nQuery: {}",
    dtype="bf16",
    append_eos=True,  # the published usage appends </s> to every input
)
_add(
    ["BAAI/bge-reasoner-embed-qwen3-8b-0923"],
    kind="decoder",
    pooling="last_token",
    normalize=True,
    query_instruction_format="Instruct: {}\nQuery: {}",
    dtype="bf16",
)
_add(
    ["intfloat/multilingual-e5-large-instruct"],
    pooling="mean",
    normalize=True,
    query_instruction=_WEB_SEARCH_E5,
    query_instruction_format="Instruct: {}\nQuery: {}",
    query_max_length=512,
    passage_max_length=512,
)
_add(
    [f"thenlper/gte-{size}" for size in ("small", "base", "large")],
    pooling="mean",
    normalize=True,
    query_max_length=512,
    passage_max_length=512,
)
_add(
    [f"Qwen/Qwen3-Embedding-{size}" for size in ("0.6B", "4B", "8B")],
    kind="decoder",
    pooling="last_token",
    normalize=True,
    query_instruction=_WEB_SEARCH_E5,
    query_instruction_format="Instruct: {}\nQuery:{}",
    padding_side="left",
    dtype="bf16",
)
_add(
    ["Alibaba-NLP/gte-Qwen2-1.5B-instruct", "Alibaba-NLP/gte-Qwen2-7B-instruct"],
    kind="decoder",
    pooling="last_token",
    normalize=True,
    query_instruction=_WEB_SEARCH_E5,
    query_instruction_format="Instruct: {}\nQuery: {}",
    dtype="bf16",
)
_add(
    ["sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L12-v2"],
    pooling="mean",
    normalize=True,
    query_max_length=256,
    passage_max_length=256,
)


def lookup(name: str) -> dict[str, Any]:
    """Return the published settings for a hub name, or an empty dict when the name is not known.

    Example:
        >>> lookup("BAAI/bge-small-en-v1.5")["pooling"]
        'cls'
    """
    return dict(_TABLE.get(name.strip().rstrip("/").lower(), {}))


def known_names() -> list[str]:
    """All hub names the table knows (lower-cased)."""
    return sorted(_TABLE)
