"""Pass a bgekit embedder to ``mteb`` as a model.

``MTEBEncoder`` speaks both of mteb's encoder interfaces:

* mteb 1.x: ``encode(sentences: list[str], *, task_name: str, prompt_type: "query" | "passage" | None)``;
* mteb 2.x: ``encode(inputs: DataLoader of {"text": [...]} batches, *, task_metadata, hf_split,
  hf_subset, prompt_type: PromptType | None)``, plus ``similarity``, ``similarity_pairwise`` and
  ``mteb_model_meta``.

Queries get the embedder's query instruction and max length, documents its passage settings; texts of
other task types (STS, classification, ...) are encoded as they are. Per-task query instructions (as BGE
uses on C-MTEB) can be given as ``query_instructions={"SciFact": "..."}``.

mteb itself is not a bgekit dependency, and its tasks download their data from the Hugging Face hub,
so running them needs network access.

Example:
    >>> import mteb                                                             # doctest: +SKIP
    >>> model = MTEBEncoder(Embedder("BAAI/bge-small-en-v1.5"))                 # doctest: +SKIP
    >>> mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bgekit.errors import InputError
from bgekit.inference.arrays import dense_array

_QUERY = "query"
_DOCUMENT_NAMES = ("document", "passage", "corpus")


def _prompt_name(prompt_type: Any) -> str | None:
    if prompt_type is None:
        return None
    return str(getattr(prompt_type, "value", prompt_type)).lower()


def _task_name(task_name: str | None, task_metadata: Any) -> str | None:
    if task_name:
        return task_name
    return getattr(task_metadata, "name", None) if task_metadata is not None else None


def _texts_from(inputs: Any) -> list[str]:
    """Sentences from a list of strings (mteb 1.x) or an iterable of ``{"text": [...]}`` batches (2.x)."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    items = list(inputs) if isinstance(inputs, Iterable) else None
    if items is None:
        raise InputError(f"encode() got {type(inputs).__name__}; expected a list of strings or batches")
    if all(isinstance(item, str) for item in items):
        return list(items)
    texts: list[str] = []
    for number, batch in enumerate(items):
        if not isinstance(batch, Mapping) or "text" not in batch:
            raise InputError(f"batch {number} is {type(batch).__name__} without a 'text' field")
        texts.extend(str(t) for t in batch["text"])
    return texts


class MTEBEncoder:
    """An mteb-compatible wrapper around a bgekit ``Embedder``.

    Args:
        embedder: a ``bgekit.Embedder`` (anything with ``encode_queries``, ``encode_corpus``, ``encode``).
        query_instructions: per-task query instructions (task name -> instruction), overriding the
            embedder's own query instruction for those tasks.
        name / revision: what mteb records as the model's name and revision.

    Example:
        >>> encoder = MTEBEncoder(embedder)                                              # doctest: +SKIP
        >>> encoder.encode(["what is bge?"], task_name="SciFact", prompt_type="query").shape   # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        embedder: Any,
        *,
        query_instructions: Mapping[str, str] | None = None,
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.embedder = embedder
        self.query_instructions = dict(query_instructions or {})
        self.name = name or str(getattr(embedder, "name_or_path", "bgekit-model"))
        fingerprint = getattr(embedder, "fingerprint", None)
        self.revision = revision or (fingerprint() if callable(fingerprint) else None)

    def encode(
        self,
        inputs: Any,
        *,
        task_name: str | None = None,
        task_metadata: Any = None,
        prompt_type: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode sentences for mteb: queries and documents with their own settings, others as they are."""
        texts = _texts_from(inputs)
        kind = _prompt_name(prompt_type)
        task = _task_name(task_name, task_metadata)
        if kind == _QUERY:
            settings = getattr(self.embedder, "settings", None)
            if task is not None and task in self.query_instructions and settings is not None:
                return dense_array(
                    self.embedder.encode(
                        texts,
                        instruction=self.query_instructions[task],
                        instruction_format=settings.query_instruction_format,
                        max_length=settings.query_max_length,
                    )
                )
            return dense_array(self.embedder.encode_queries(texts))
        if kind in _DOCUMENT_NAMES:
            return dense_array(self.embedder.encode_corpus(texts))
        if kind is not None:
            raise InputError(f"prompt_type={kind!r}; expected 'query', 'document' (or 'passage') or None")
        return dense_array(self.embedder.encode(texts))

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity matrix (a torch tensor, as sentence-transformers returns)."""
        import torch

        a = torch.nn.functional.normalize(
            torch.as_tensor(np.atleast_2d(np.asarray(embeddings1, np.float32))), dim=-1
        )
        b = torch.nn.functional.normalize(
            torch.as_tensor(np.atleast_2d(np.asarray(embeddings2, np.float32))), dim=-1
        )
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity of each pair (row i with row i)."""
        import torch

        a = torch.nn.functional.normalize(
            torch.as_tensor(np.atleast_2d(np.asarray(embeddings1, np.float32))), dim=-1
        )
        b = torch.nn.functional.normalize(
            torch.as_tensor(np.atleast_2d(np.asarray(embeddings2, np.float32))), dim=-1
        )
        return (a * b).sum(-1)

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` for this model (needs mteb 2.x installed)."""
        try:
            from mteb.models.model_meta import ModelMeta
        except ImportError as exc:
            raise ImportError("mteb_model_meta needs mteb 2.x: pip install mteb") from exc
        return ModelMeta.create_empty(
            overwrites={
                "name": self.name if "/" in self.name else f"bgekit/{self.name}",
                "revision": self.revision,
            }
        )
