"""The reranker: (query, passage) pairs in, relevance scores out, for every kind of BGE reranker.

Cross-encoders (bge-reranker-base/large/v2-m3, any ``AutoModelForSequenceClassification``), LLM rerankers
(bge-reranker-v2-gemma style), layer-wise rerankers (bge-reranker-v2-minicpm-layerwise style, or any
standard HF decoder through a generic implementation) and lightweight rerankers (the checkpoint's own
code), all through the one batching engine and device pool the embedders use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bgekit.engine import BatchEngine, batch_overhead_tokens, pad_sequences
from bgekit.errors import ConfigError, InputError, ModelLoadError
from bgekit.inference.base import RUNTIME_ARGS, DeviceModel, file_fingerprint, merge_adapter
from bgekit.inference.inputs import apply_instruction, corpus_item_text
from bgekit.inference.options import RerankOptions
from bgekit.inference.ranking import ranked_indices
from bgekit.inference.rerank_heads import (
    cross_encoder_scores,
    decoder_parts,
    forward_accepts,
    layerwise_generic_scores,
    layerwise_remote_scores,
    lightweight_scores,
    llm_scores,
)
from bgekit.inference.rerank_inputs import CrossEncoderInputs, PromptInputs, as_pair_list
from bgekit.inference.reranker_settings import (
    DEFAULT_DTYPE,
    RerankerSettings,
    resolve_reranker_settings,
)
from bgekit.models import reranker_registry
from bgekit.models.loading import load_config, load_tokenizer

DEFAULT_BATCH_SIZE = 128
"""FlagEmbedding's reranker batch size."""
DEFAULT_MAX_TOKENS_PER_BATCH = 32768  # on GPUs; CPUs use engine.CPU_MAX_TOKENS_PER_BATCH
"""Padded tokens per batch: short pairs batch wide, long ones stay within memory."""

_SETTING_ARGS = tuple(RerankerSettings.field_names())
_RUNTIME_ARGS = (*RUNTIME_ARGS, "peft_path")


@dataclass(frozen=True)
class TokenizedPair:
    """One (query, passage) pair as :meth:`Reranker.tokenize_pairs` prepares it for the model."""

    feature: dict[str, list[int]]
    query_length: int
    prompt_length: int


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, in float64 as FlagEmbedding's ``sigmoid``."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class Reranker(DeviceModel):
    """Score (query, passage) pairs with a cross-encoder or an LLM reranker.

    Args:
        model_name_or_path: a hub name (``"BAAI/bge-reranker-v2-m3"``) or a local folder.
        kind: ``"cross-encoder"``, ``"llm"``, ``"layerwise"`` or ``"lightweight"``; detected from the
            checkpoint when not given (sequence classification -> cross-encoder, causal LM -> llm).
        normalize: apply a sigmoid to the scores (default False, as FlagEmbedding).
        query_instruction / query_instruction_format: text put before each query, and how (``"{}{}"``).
            LLM rerankers default to ``"A: "``.
        passage_instruction / passage_instruction_format: the same for passages (LLM default ``"B: "``).
        max_length: token limit of a pair (default 512); the passage is truncated to fit.
        query_max_length: token limit of the query alone (default 3/4 of ``max_length``).
        prompt: the question after an LLM reranker's pair (default: the checkpoint's, see
            ``bgekit.models.reranker_registry``).
        cutoff_layers: layers to score from (layer-wise); several give one list of scores per layer.
        compress_layers / compress_ratio: the lightweight reranker's token compression (checkpoint code).
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (as for ``Embedder``).
        device / devices: one device, or several (one worker process per device).
        batch_size / max_tokens_per_batch: the batching engine's limits (token budget default 4,096 on CPU,
            32,768 on GPU; ``None``: no cap).
        show_progress: progress bar (``None``: only for long inputs).
        trust_remote_code: run code shipped with the checkpoint (off unless asked).
        peft_path: a LoRA/PEFT adapter, loaded onto the model and merged.

    Settings not given come from the folder's ``bgekit.json`` (``reranker`` section), then bgekit's table
    of published rerankers, then the defaults above.

    Example:
        >>> reranker = Reranker(cross_encoder_dir, device="cpu")                  # doctest: +SKIP
        >>> reranker.compute_score([("what is a panda?", "The giant panda is a bear.")])   # doctest: +SKIP
        [2.71...]
    """

    settings_section = "reranker"
    onnx_task = "sequence-classification"
    default_batch_size = DEFAULT_BATCH_SIZE
    settings: RerankerSettings

    def __init__(self, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> None:
        self._open(model_name_or_path, kwargs, _SETTING_ARGS + _RUNTIME_ARGS)
        self.peft_path = kwargs.get("peft_path")
        self.config = self._load_config()

        explicit = {k: kwargs.get(k) for k in _SETTING_ARGS}
        self.settings, self.settings_origin = resolve_reranker_settings(
            self.name_or_path, self.folder, explicit, self.config
        )
        self.kind: str = str(self.settings.kind)
        self._init_runtime(kwargs, self.settings.dtype or DEFAULT_DTYPE, DEFAULT_MAX_TOKENS_PER_BATCH)

        self.tokenizer = load_tokenizer(self.folder, trust_remote_code=self.trust_remote_code)
        original_pad_id = self.tokenizer.pad_token_id
        if self.tokenizer.pad_token_id is None:
            # decoder tokenizers often have no pad token; padding is masked, so any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.n_layers = int(getattr(self.config, "num_hidden_layers", 0) or 0)

        self._cross_inputs: CrossEncoderInputs | None = None
        self._prompt_inputs: PromptInputs | None = None
        self.yes_token_id: int | None = None
        if self.kind == "cross-encoder":
            self._cross_inputs = CrossEncoderInputs(self.tokenizer)
            self._check_position_limit()
        else:
            self._prompt_inputs = PromptInputs(
                self.tokenizer, always_bos=self.kind != "llm", original_pad_id=original_pad_id
            )
            yes = self.tokenizer("Yes", add_special_tokens=False)["input_ids"]
            if not yes:
                raise ModelLoadError(f"the tokenizer of {self.folder!r} turns 'Yes' into no tokens")
            # the token the model was trained to predict: FlagEmbedding's training takes the last piece
            self.yes_token_id = int(yes[-1])
        self._check_call_settings(
            self.settings.max_length, self.settings.query_max_length, self.settings.cutoff_layers
        )
        if len(self.devices) == 1:
            self._load_model()

    # ----------------------------------------------------------------------------------------- loading
    def _load_config(self) -> Any:
        return load_config(self.folder, trust_remote_code=self.trust_remote_code)

    def _check_position_limit(self) -> None:
        positions = getattr(self.config, "max_position_embeddings", None)
        max_length = int(self.settings.max_length or 0)
        if isinstance(positions, int) and positions > 0:
            offset = 0
            if getattr(self.config, "model_type", "") in (
                "roberta",
                "xlm-roberta",
                "camembert",
                "longformer",
            ):
                offset = (
                    int(getattr(self.config, "pad_token_id", 1) or 1) + 1
                )  # positions start after padding_idx
            if max_length > positions - offset:
                raise ConfigError(
                    f"max_length={max_length} exceeds what the model takes ({positions - offset} tokens, "
                    f"max_position_embeddings={positions}); use max_length <= {positions - offset}"
                )

    def _tune_class(self) -> type[Reranker]:
        return Reranker

    def _tune_outputs(self, texts: list[str]) -> Any:
        return np.asarray(self.compute_score([(texts[0], text) for text in texts]), dtype=np.float32)

    def _check_onnx(self) -> None:
        if self.kind != "cross-encoder":
            raise ConfigError(
                f"backend={self.backend!r} supports cross-encoders only, not {self.kind!r} rerankers"
            )

    def _load_torch_model(self) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        if self.kind == "cross-encoder":
            model = self._load_weights(AutoModelForSequenceClassification)
            labels = int(getattr(model.config, "num_labels", 1))
            if labels != 1:
                raise ConfigError(
                    f"{self.folder!r} has num_labels={labels}; a cross-encoder reranker has one output (num_labels=1)"
                )
        else:
            if self.kind == "lightweight" and not self.trust_remote_code:
                raise ConfigError(
                    "lightweight rerankers (cutoff_layers, compress_layers, compress_ratio) run the checkpoint's own "
                    "code, which bgekit does not copy; pass trust_remote_code=True"
                )
            model = self._load_weights(AutoModelForCausalLM)
            if self.peft_path:
                model = merge_adapter(model, str(self.peft_path), "peft_path")
            if self.kind == "lightweight" and not forward_accepts(model, "compress_ratio"):
                raise ConfigError(
                    f"{type(model).__name__} has no token compression (its forward takes no compress_ratio); "
                    f"a lightweight reranker needs a checkpoint that ships that code"
                )
            if self.kind == "llm" and forward_accepts(model, "cutoff_layers"):
                self.kind = "layerwise"  # a checkpoint with per-layer heads: its logits are per layer
        return model

    def _layer_range(self) -> tuple[int, int]:
        """The cutoff layers this model can score from (inclusive)."""
        start = getattr(self.config, "start_layer", None)
        if (
            self._model is not None
            and forward_accepts(self._model, "cutoff_layers")
            and isinstance(start, int)
        ):
            return start, self.n_layers
        return 1, self.n_layers

    def _check_call_settings(self, max_length: Any, query_max_length: Any, cutoff_layers: Any) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
            raise ConfigError(f"max_length={max_length!r} is not valid; expected a positive integer")
        if query_max_length is not None and (
            not isinstance(query_max_length, int)
            or isinstance(query_max_length, bool)
            or query_max_length <= 0
        ):
            raise ConfigError(
                f"query_max_length={query_max_length!r} is not valid; expected a positive integer"
            )
        if cutoff_layers is not None:
            if self.kind == "cross-encoder":
                raise ConfigError(
                    "cutoff_layers is for layer-wise LLM rerankers; this model is a cross-encoder"
                )
            low, high = self._layer_range()
            bad = [k for k in cutoff_layers if not low <= k <= high]
            if bad:
                raise ConfigError(
                    f"cutoff_layers {bad} are outside the model: valid layers are {low}..{high} "
                    f"({self.n_layers} layers)"
                )

    def _worker_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self.settings.to_dict()
        kwargs.update(self._runtime_kwargs(), kind=self.kind, peft_path=self.peft_path)
        return kwargs

    # -------------------------------------------------------------------------------------- scoring
    def compute_score(self, sentence_pairs: Any, **kwargs: Any) -> Any:
        """Score (query, passage) pairs.

        Args:
            sentence_pairs: a list of ``(query, passage)`` pairs (passages may be ``{"title", "text"}``
                dicts), or one pair.
            batch_size, max_length, query_max_length, normalize, prompt, cutoff_layers, compress_layers,
            compress_ratio, show_progress: override the reranker's settings for this call.

        Returns:
            A list of floats (a float for a single pair). With several ``cutoff_layers``, one such list
            per layer, as FlagEmbedding.

        Raises:
            InputError: a pair that is not two strings, naming its index.

        Example:
            >>> reranker.compute_score([("what is a panda?", "A bear."), ("what is a panda?", "A fruit.")])  # doctest: +SKIP
            [3.1, -2.4]
        """
        options = self._call_options(kwargs)
        pairs, single = as_pair_list(sentence_pairs, "sentence_pairs")
        pairs = self._apply_instructions(pairs)
        if not pairs:
            return []
        if len(self.devices) > 1 and len(pairs) > 1:
            parts = self._map_split(
                "_score_local",
                len(pairs),
                lambda a, b: (pairs[a:b], options.at(a)),
            )
            logits = np.concatenate(parts, axis=0)
        else:
            logits = self._score_local(pairs, options)
        scores = sigmoid(logits) if options.normalize else logits.astype(np.float64)
        columns = [scores[:, j].tolist() for j in range(scores.shape[1])]
        if single:
            return columns[0][0] if len(columns) == 1 else [c[0] for c in columns]
        return columns[0] if len(columns) == 1 else columns

    def rank(
        self, query: str, passages: Any, top_k: int | None = None, **kwargs: Any
    ) -> list[tuple[int, float]]:
        """Rank passages for one query: ``[(index, score), ...]`` best first, ties in input order.

        Args:
            query: the query.
            passages: strings or ``{"title", "text"}`` dicts.
            top_k: keep only the best ``top_k`` (default all).
            **kwargs: as ``compute_score`` (one cutoff layer at most).

        Example:
            >>> reranker.rank("what is a panda?", ["A fruit.", "A bear."], top_k=1)   # doctest: +SKIP
            [(1, 3.1)]
        """
        if not isinstance(query, str):
            raise InputError(f"query is {type(query).__name__}; expected a string")
        if isinstance(passages, str | dict) or not isinstance(passages, list | tuple):
            raise InputError(
                f"passages must be a list of strings or title/text dicts, got {type(passages).__name__}"
            )
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
            raise ConfigError(f"top_k={top_k!r} is not valid; expected a non-negative integer or None")
        texts = [corpus_item_text(p, i, "passages") for i, p in enumerate(passages)]
        cutoff = kwargs.get("cutoff_layers") or self.settings.cutoff_layers
        if cutoff is not None and len(cutoff) > 1:
            raise ConfigError(f"rank needs one score per passage; pass cutoff_layers=[k] (got {cutoff})")
        scores = self.compute_score([(query, t) for t in texts], **kwargs) if texts else []
        return [(i, float(scores[i])) for i in ranked_indices(scores, top_k)]

    def _call_options(self, kwargs: dict[str, Any]) -> RerankOptions:
        """This call's options: the caller's, else the reranker's settings (the one place they meet)."""
        s = self.settings
        given = {k: v for k, v in kwargs.items() if v is not None}
        max_length: Any = given.pop("max_length", None) or s.max_length
        query_max_length: Any = given.pop("query_max_length", None) or s.query_max_length
        cutoff_layers = given.pop("cutoff_layers", None) or s.cutoff_layers
        if isinstance(cutoff_layers, int) and not isinstance(cutoff_layers, bool):
            cutoff_layers = [cutoff_layers]
        self._check_call_settings(max_length, query_max_length, cutoff_layers)
        return RerankOptions.build(
            "Reranker.compute_score",
            given,
            batch_size=self.call_batch_size(given.get("batch_size")),
            max_length=max_length,
            query_max_length=max_length * 3 // 4 if query_max_length is None else query_max_length,
            normalize=bool(given.get("normalize", s.normalize)),
            prompt=given.get("prompt") or s.prompt,
            cutoff_layers=cutoff_layers,
            compress_layers=given.get("compress_layers") or s.compress_layers,
            compress_ratio=given.get("compress_ratio") or s.compress_ratio,
            show_progress=given.get("show_progress", self.show_progress),
        )

    def _apply_instructions(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        s = self.settings
        queries = apply_instruction([q for q, _ in pairs], s.query_instruction, s.query_instruction_format)
        passages = apply_instruction(
            [p for _, p in pairs], s.passage_instruction, s.passage_instruction_format
        )
        return list(zip(queries, passages, strict=True))

    def _default_prompt(self) -> str:
        if self.kind == "lightweight":
            return reranker_registry.LIGHTWEIGHT_PROMPT
        return reranker_registry.LLM_PROMPT

    # ------------------------------------------------- the pair protocol a server batches requests with
    def tokenize_pairs(self, sentence_pairs: Any) -> list[TokenizedPair]:
        """Token features of (query, passage) pairs with this reranker's settings: the part of
        ``compute_score`` that needs no model. A server runs it off the model's thread and scores many
        requests' pairs in one :meth:`score_tokenized` call.

        Example:
            >>> pairs = reranker.tokenize_pairs([("what is a panda?", "A bear.")])   # doctest: +SKIP
            >>> reranker.score_tokenized(pairs)   # doctest: +SKIP
            array([3.1])
        """
        pairs, _ = as_pair_list(sentence_pairs, "sentence_pairs")
        features, query_lengths, prompt_length = self._pair_features(
            self._apply_instructions(pairs), self._call_options({})
        )
        return [
            TokenizedPair(feature, query_lengths[i] if query_lengths else 0, prompt_length)
            for i, feature in enumerate(features)
        ]

    def score_tokenized(self, pairs: list[TokenizedPair], *, normalize: bool | None = None) -> np.ndarray:
        """Scores of :meth:`tokenize_pairs` output on this process's device, float64 (n,): the last
        cutoff layer's where there are several; a sigmoid when ``normalize`` (default: the settings)."""
        options = self._call_options({} if normalize is None else {"normalize": normalize})
        if not pairs:
            return np.zeros(0)
        logits = self._score_features(
            [p.feature for p in pairs], [p.query_length for p in pairs], pairs[0].prompt_length, options
        )[:, -1]
        return sigmoid(logits) if options.normalize else logits.astype(np.float64)

    def _pair_features(
        self, pairs: list[tuple[str, str]], options: RerankOptions
    ) -> tuple[list[dict[str, list[int]]], list[int], int]:
        """Token features of instruction-formatted pairs, the query lengths and the prompt's length (both
        for the lightweight kind's compression; empty and 0 for a cross-encoder)."""
        max_length, query_max_length = options.max_length, options.query_max_length
        if self._cross_inputs is not None:
            return self._cross_inputs.features(pairs, max_length, query_max_length), [], 0
        assert self._prompt_inputs is not None
        prompt = options.prompt or self._default_prompt()
        return self._prompt_inputs.features(pairs, max_length, query_max_length, prompt)

    def _score_local(self, pairs: list[tuple[str, str]], options: RerankOptions) -> np.ndarray:
        """Raw scores (logits) of instruction-formatted pairs on this process's device: (n, n_outputs)."""
        return self._score_features(*self._pair_features(pairs, options), options)

    def _score_features(
        self,
        features: list[dict[str, list[int]]],
        query_lengths: list[int],
        prompt_length: int,
        options: RerankOptions,
    ) -> np.ndarray:
        model = self._load_model()
        pad_id = int(self.tokenizer.pad_token_id)
        kind, yes_id = self.kind, self.yes_token_id
        cutoff = options.cutoff_layers
        if kind == "llm" and cutoff is not None:
            kind = "layerwise"  # cutoff_layers for this call: score from those layers
        # layer-wise with no layers named: the deepest one
        layers: list[int] = [self.n_layers] if cutoff is None else cutoff
        if kind == "layerwise" and not forward_accepts(model, "cutoff_layers"):
            decoder_parts(model)  # a clear error now rather than inside the first batch

        def step(indices: list[int]) -> torch.Tensor:
            # lightweight compression pads to a multiple of 8 in FlagEmbedding; the same keeps it exact
            multiple = 8 if kind == "lightweight" else None
            batch = pad_sequences([features[i] for i in indices], pad_id, pad_to_multiple_of=multiple)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                if kind == "cross-encoder":
                    scores = cross_encoder_scores(model, batch)[:, None]
                elif kind == "llm":
                    assert yes_id is not None
                    scores = llm_scores(model, batch, yes_id)[:, None]
                elif kind == "layerwise" and forward_accepts(model, "cutoff_layers"):
                    scores = layerwise_remote_scores(model, batch, layers)
                elif kind == "layerwise":
                    assert yes_id is not None
                    scores = layerwise_generic_scores(model, batch, yes_id, layers)
                else:
                    scores = lightweight_scores(
                        model,
                        batch,
                        cutoff,
                        options.compress_layers,
                        options.compress_ratio,
                        [query_lengths[i] for i in indices],
                        prompt_length,
                    )
            return scores.cpu()

        engine = BatchEngine(
            batch_size=options.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=options.show_progress,
            desc="Reranking",
            position_offset=options.position_offset,
            overhead_tokens=batch_overhead_tokens(self.device),
        )
        out = engine.run([len(f["input_ids"]) for f in features], step)
        return out.numpy().astype(np.float32)

    # ---------------------------------------------------------------------------------------- saving
    def _saved_settings(self) -> dict[str, Any]:
        settings = super()._saved_settings()
        settings["kind"] = self.kind
        return settings

    def fingerprint(self) -> str:
        """A hash of everything that changes this reranker's scores: model files, settings, dtype.

        Example:
            >>> reranker.fingerprint()   # doctest: +SKIP
            '3f9c0a...'
        """
        parts = [
            repr(sorted(self.settings.to_dict().items())),
            f"{self.backend}/{self.quantization}",
            f"{self.kind}|{self.dtype}|{self.peft_path}",
            file_fingerprint(self.folder),
        ]
        return self._digest(parts, str(self.peft_path) if self.peft_path else None)

    def _repr_fields(self) -> dict[str, Any]:
        s = self.settings
        return {"kind": self.kind, "normalize": s.normalize, "max_length": s.max_length}


class AutoReranker:
    """Factory mirroring transformers' ``Auto*`` classes: the kind comes from the checkpoint.

    Example:
        >>> AutoReranker.from_pretrained("BAAI/bge-reranker-v2-m3", normalize=True)   # doctest: +SKIP
    """

    def __init__(self) -> None:
        raise TypeError("use AutoReranker.from_pretrained(name_or_path, ...)")

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Reranker:
        """Load a reranker; its kind (cross-encoder, llm, layer-wise, lightweight) comes from its settings."""
        return Reranker(model_name_or_path, **kwargs)
