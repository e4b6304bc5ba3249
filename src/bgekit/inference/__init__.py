"""Embedders and rerankers: models as a backbone plus heads, run through the one batching engine."""
