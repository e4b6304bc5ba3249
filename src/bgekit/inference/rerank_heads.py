"""How one padded batch of pairs becomes scores, for each kind of reranker.

- cross-encoder: the sequence-classification logit.
- llm: the logit of the "Yes" token at the last real position, through the model's own head (so final
  logit soft-capping and the like apply), computing vocabulary logits only at the positions needed.
- layer-wise, generic: the hidden state after each chosen layer, put through the model's final norm and
  LM head (the same head the last layer uses), the "Yes" logit at the last real position; layers after
  the deepest one asked for are not run.
- layer-wise with the checkpoint's per-layer heads and lightweight: the checkpoint's own code (remote code,
  only with ``trust_remote_code=True``).

Batches are always right-padded: positions then start at 0 for every pair, so a pair's score does not
depend on what it was batched with.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from bgekit.errors import ConfigError


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (checkpoint code with extra options)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def cross_encoder_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**batch, return_dict=True).logits
    return logits[:, 0].float()


def llm_scores(model: Any, batch: dict[str, torch.Tensor], yes_id: int) -> torch.Tensor:
    last = last_positions(batch["attention_mask"])
    if forward_accepts(model, "logits_to_keep"):
        # vocabulary logits only at the distinct last positions of this batch (length-sorted: few)
        keep, slot = torch.unique(last, return_inverse=True)
        logits = model(**batch, use_cache=False, logits_to_keep=keep, return_dict=True).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, slot, yes_id].float()
    logits = model(**batch, use_cache=False, return_dict=True).logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, last, yes_id].float()


class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer has run."""


def decoder_parts(model: Any) -> tuple[Any, Any, Any, Any]:
    """The decoder body, its list of layers, its final norm and the LM head of a standard HF causal LM."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or layers is None or norm is None or head is None:
        raise ConfigError(
            f"the generic layer-wise reranker needs a standard Hugging Face decoder (a `.model.layers` list, a "
            f"`.model.norm` and an LM head); {type(model).__name__} has not got them. If the checkpoint ships "
            f"its own layer-wise code, pass trust_remote_code=True"
        )
    return decoder, layers, norm, head


def layerwise_generic_scores(
    model: Any, batch: dict[str, torch.Tensor], yes_id: int, cutoff_layers: list[int]
) -> torch.Tensor:
    """Scores of shape (batch, len(cutoff_layers)): layer ``k`` means the hidden state after ``k`` layers."""
    decoder, layers, norm, head = decoder_parts(model)
    last = last_positions(batch["attention_mask"])
    rows = torch.arange(last.shape[0], device=last.device)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(cutoff_layers)

    def capture(k: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple | list) else output
            captured[k] = hidden[rows, last]
            if k == deepest:
                raise _StopForward

        return hook

    handles = [layers[k - 1].register_forward_hook(capture(k)) for k in sorted(set(cutoff_layers))]
    try:
        decoder(**batch, use_cache=False, return_dict=True)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack([captured[k] for k in cutoff_layers], dim=1)  # (batch, n_layers, hidden)
    logits = head(norm(hidden))[..., yes_id]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def layerwise_remote_scores(
    model: Any, batch: dict[str, torch.Tensor], cutoff_layers: list[int]
) -> torch.Tensor:
    """The checkpoint's per-layer heads (e.g. bge-reranker-v2-minicpm-layerwise): one logit per token."""
    outputs = model(**batch, use_cache=False, output_hidden_states=True, cutoff_layers=cutoff_layers)
    last = last_positions(batch["attention_mask"])
    rows = torch.arange(last.shape[0], device=last.device)
    scores = []
    for logits in outputs.logits:
        if logits.dim() != 2 or logits.shape[1] != batch["input_ids"].shape[1]:
            raise ConfigError(
                f"the checkpoint's layer-wise heads return logits of shape {tuple(logits.shape)}; expected one "
                f"score per token (head_type 'simple')"
            )
        scores.append(logits[rows, last])
    return torch.stack(scores, dim=1).float()


def lightweight_scores(
    model: Any,
    batch: dict[str, torch.Tensor],
    cutoff_layers: list[int] | None,
    compress_layers: list[int] | None,
    compress_ratio: int | None,
    query_lengths: list[int],
    prompt_length: int,
) -> torch.Tensor:
    """The checkpoint's own lightweight code (bge-reranker-v2.5-gemma2-lightweight's token compression)."""
    outputs = model(
        **batch,
        use_cache=False,
        output_hidden_states=True,
        compress_layer=compress_layers,
        compress_ratio=compress_ratio,
        query_lengths=query_lengths,
        prompt_lengths=[prompt_length] * len(query_lengths),
        cutoff_layers=cutoff_layers,
    )
    scores = []
    for logits, mask in zip(outputs.logits, outputs.attention_masks, strict=True):
        last = last_positions(mask)
        rows = torch.arange(last.shape[0], device=last.device)
        scores.append(logits[rows, last])
    return torch.stack(scores, dim=1).float()
