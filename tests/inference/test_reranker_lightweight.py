"""Lightweight rerankers run the checkpoint's own code: what bgekit passes it, and what it refuses.

FlagEmbedding's vendored Gemma-2 lightweight model does not run on the installed transformers, so there
is no reference to compare scores with; a toy checkpoint with its own (remote) code records the
arguments it receives in its outputs instead.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from bgekit import ConfigError, Reranker

TOY_CONFIG = """
from transformers import PretrainedConfig


class ToyLightweightConfig(PretrainedConfig):
    model_type = "toy_lightweight"

    def __init__(self, vocab_size=10, num_hidden_layers=4, start_layer=2, **kwargs):
        self.vocab_size = vocab_size
        self.num_hidden_layers = num_hidden_layers
        self.start_layer = start_layer
        super().__init__(**kwargs)
"""

TOY_MODEL = '''
from types import SimpleNamespace

import torch
from transformers import PreTrainedModel

from .toy_config import ToyLightweightConfig


class ToyLightweight(PreTrainedModel):
    """Scores encode the arguments received: layer, query length, prompt length, pooled position."""

    config_class = ToyLightweightConfig

    def __init__(self, config):
        super().__init__(config)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=None, output_hidden_states=None,
                compress_layer=None, compress_ratio=None, query_lengths=None, prompt_lengths=None,
                cutoff_layers=None):
        n, width = input_ids.shape
        assert width % 8 == 0, "FlagEmbedding pads lightweight batches to a multiple of 8"
        logits, masks = [], []
        assert compress_ratio == 2 and list(compress_layer) == [2, 3], (compress_ratio, compress_layer)
        positions = torch.arange(width, dtype=torch.float32)
        for layer in cutoff_layers:
            rows = []
            for i in range(n):
                # exact in float32: layer, query length, prompt length and the position read out
                base = layer * 1_000_000 + query_lengths[i] * 10_000 + prompt_lengths[i] * 100
                rows.append((base + positions) * attention_mask[i])
            logits.append(torch.stack(rows))
            masks.append(attention_mask)
        return SimpleNamespace(logits=tuple(logits), attention_masks=masks)
'''


@pytest.fixture(scope="module")
def toy_lightweight_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_bos: Any) -> str:
    folder = tmp_path_factory.mktemp("toy-lightweight")
    (folder / "toy_config.py").write_text(TOY_CONFIG)
    (folder / "toy_model.py").write_text(TOY_MODEL)
    config = {
        "model_type": "toy_lightweight",
        "architectures": ["ToyLightweight"],
        "auto_map": {
            "AutoConfig": "toy_config.ToyLightweightConfig",
            "AutoModelForCausalLM": "toy_model.ToyLightweight",
        },
        "vocab_size": 10,
        "num_hidden_layers": 4,
        "start_layer": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    bpe_tokenizer_bos.save_pretrained(folder)
    return str(folder)


def test_lightweight_refuses_without_trust_remote_code(toy_lightweight_dir: str) -> None:
    with pytest.raises(ConfigError, match="trust_remote_code=True"):
        Reranker(toy_lightweight_dir, device="cpu", kind="lightweight")


def test_lightweight_passes_lengths_and_compression(toy_lightweight_dir: str) -> None:
    pairs = [("what is a panda?", "A bear that eats bamboo in China."), ("why?", "Because.")]
    reranker = Reranker(
        toy_lightweight_dir,
        device="cpu",
        kind="lightweight",
        trust_remote_code=True,
        cutoff_layers=[2, 4],
        compress_layers=[2, 3],
        compress_ratio=2,
        max_length=64,
    )
    scores = np.asarray(reranker.compute_score(pairs))
    assert scores.shape == (2, 2)
    inputs = reranker._prompt_inputs
    assert inputs is not None
    prompt = reranker._default_prompt()
    assert prompt == "Predict whether passage B contains an answer to query A."
    features, query_lengths, prompt_length = inputs.features(
        reranker._apply_instructions(pairs), 64, 48, prompt
    )
    for column, layer in enumerate([2, 4]):
        for i, feature in enumerate(features):
            bos, q = 1, len(reranker.tokenizer(f"A: {pairs[i][0]}", add_special_tokens=False)["input_ids"])
            assert query_lengths[i] == bos + q + len(inputs.sep)
            last = len(feature["input_ids"]) - 1
            expected = layer * 1_000_000 + query_lengths[i] * 10_000 + prompt_length * 100 + last
            assert scores[column][i] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match=r"valid layers are 2\.\.4"):  # the checkpoint's start_layer
        reranker.compute_score(pairs, cutoff_layers=[1])
