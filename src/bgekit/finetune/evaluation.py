"""Retrieval evaluation during training: nDCG and recall on a small BEIR-style set, logged with the loss.

Uses ``bgekit.evaluation`` (faiss search, pytrec_eval metrics), with the model being trained encoding
through bgekit's batching engine and the model's own pooling, normalisation and instructions.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
from transformers import TrainerCallback

from bgekit.engine import BatchEngine, tokenize_texts
from bgekit.inference.embedder import DEFAULT_MAX_TOKENS_PER_BATCH
from bgekit.inference.heads import DenseOptions, run_encode_step
from bgekit.inference.inputs import apply_instruction, corpus_item_text
from bgekit.models.loading import model_max_length

logger = logging.getLogger(__name__)


class TrainingModelEncoder:
    """An ``EncoderLike`` over the model being trained (eval mode, no gradients, restored afterwards).

    Example:
        >>> enc = TrainingModelEncoder(model, tokenizer, settings)   # doctest: +SKIP
        >>> enc.encode_queries(["what is bge?"]).shape                # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any, settings: Any, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.settings, self.batch_size = model, tokenizer, settings, batch_size

    def _limit(self, configured: int | None) -> int:
        """The Embedder's rule: the saved setting, else the model's own limit (``model_max_length``)."""
        if configured:
            return int(configured)
        return model_max_length("", getattr(self.model, "config", None), self.tokenizer)

    def _encode(self, texts: list[str], max_length: int) -> np.ndarray:
        device = next(self.model.parameters()).device
        features = tokenize_texts(self.tokenizer, texts, max_length)
        # the settings' pooling and normalisation; no Matryoshka cut, as the loss sees full vectors
        dense = DenseOptions(
            pooling=self.settings.pooling,
            truncate_dim=None,
            normalize=self.settings.normalize,
            colbert_dim=None,
            colbert_normalize=False,
        )
        engine = BatchEngine(
            batch_size=self.batch_size, max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, show_progress=False
        )
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = run_encode_step(engine, self.model, self.tokenizer, features, dense, device)
            return np.asarray(outputs.numpy())
        finally:
            self.model.train(was_training)

    def encode_queries(self, queries: list[str], **kwargs: Any) -> np.ndarray:
        s = self.settings
        texts = apply_instruction(list(queries), s.query_instruction, s.query_instruction_format)
        return self._encode(texts, self._limit(s.query_max_length))

    def encode_corpus(self, corpus: list[Any], **kwargs: Any) -> np.ndarray:
        s = self.settings
        texts = [corpus_item_text(item, i) for i, item in enumerate(corpus)]
        texts = apply_instruction(texts, s.passage_instruction, s.passage_instruction_format)
        return self._encode(texts, self._limit(s.passage_max_length))


class RetrievalEvalCallback(TrainerCallback):
    """Evaluate retrieval every ``eval_steps`` (or each epoch) and log ``eval_ndcg_at_10`` and friends.

    Args:
        dataset_dir: a BEIR-style folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
        split: which qrels to use.
        tokenizer / settings: how the model encodes (the settings it is saved with).
        max_corpus: keep the judged documents plus a seeded sample up to this many documents.

    Example:
        >>> callback = RetrievalEvalCallback("data/scifact-small", split="dev", tokenizer=tok, settings=s)  # doctest: +SKIP
    """

    def __init__(
        self, dataset_dir: str, *, split: str, tokenizer: Any, settings: Any, max_corpus: int | None = None
    ) -> None:
        from bgekit.evaluation import load_dataset

        self.dataset = load_dataset(dataset_dir, split=split)
        if max_corpus is not None and len(self.dataset.corpus) > max_corpus:
            judged = {d for docs in self.dataset.qrels.values() for d in docs if d in self.dataset.corpus}
            others = sorted(set(self.dataset.corpus) - judged)
            keep = judged | set(random.Random(0).sample(others, max(0, max_corpus - len(judged))))
            self.dataset.corpus = {d: self.dataset.corpus[d] for d in self.dataset.corpus if d in keep}
        self.tokenizer, self.settings = tokenizer, settings
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []

    def run(self, model: Any, step: int) -> dict[str, float]:
        """Evaluate ``model`` now; returns the metrics (also logged through the trainer)."""
        from bgekit.evaluation import evaluate

        encoder = TrainingModelEncoder(model, self.tokenizer, self.settings)
        result = evaluate(
            encoder, self.dataset, split=self.dataset.split, show_progress=False, log=lambda _: None
        )
        scores = result.get(self.dataset.name).scores
        metrics = {f"eval_{k}": float(scores[k]) for k in ("ndcg_at_10", "recall_at_100") if k in scores}
        self.history.append({"step": step, **metrics})
        if self.trainer is not None:
            self.trainer.log(metrics)
        return metrics

    def _due(self, args: Any, state: Any) -> bool:
        steps = args.eval_steps
        return bool(steps and steps >= 1) and state.global_step % int(steps) == 0

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None and self._due(args, state):
            self.run(model, state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if (
            state.is_world_process_zero
            and model is not None
            and not (args.eval_steps and args.eval_steps >= 1)
        ):
            self.run(model, state.global_step)
