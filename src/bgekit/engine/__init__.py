"""The one batching engine (tokenize, sort by length, token budget, OOM back-off, input order) and the
multi-device worker pool; every embedder and reranker runs through them."""

from bgekit.engine.batching import (
    CPU_BATCH_OVERHEAD_TOKENS,
    CPU_MAX_TOKENS_PER_BATCH,
    BatchEngine,
    batch_overhead_tokens,
    default_token_budget,
    is_out_of_memory,
    pad_sequences,
    tokenize_texts,
)
from bgekit.engine.pool import DevicePool

__all__ = [
    "CPU_BATCH_OVERHEAD_TOKENS",
    "CPU_MAX_TOKENS_PER_BATCH",
    "BatchEngine",
    "DevicePool",
    "batch_overhead_tokens",
    "default_token_budget",
    "is_out_of_memory",
    "pad_sequences",
    "tokenize_texts",
]
