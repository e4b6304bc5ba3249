"""BGE-VL-MLLM (LLaVA-NeXT) on tiny random weights, saved and loaded through the public API.

The expected vectors are computed here item by item with transformers' own ``LlavaNextProcessor`` and
``LlavaNextForConditionalGeneration`` from the prompts written out as the official
``modeling_MMRet_MLLM.py`` (``prepare_text_input`` / ``data_process``) builds them: the image opened,
resized to 512 x 512 and converted to RGB, the final hidden state of the last token, L2-normalised.
bgekit batches mixed items (texts, images, both) with left padding; the vectors must not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit.errors import ConfigError, InputError
from bgekit.multimodal import MultimodalEmbedder
from bgekit.multimodal.mllm import MLLMEmbedder
from tests.builders import build_decoder_tokenizer

CIR = "Retrieve the target image that best meets the combined criteria by using both the provided image and the image retrieval instructions: "
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def build_tiny_llava_next(folder: Path, *, seed: int = 0) -> str:
    """A random LLaVA-NeXT (2-layer Mistral, 2-layer CLIP vision tower on 32 x 32 tiles of 8 x 8 patches)
    with a trained BPE tokenizer plus an ``<image>`` token, saved as the llava-hf checkpoints are."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = build_decoder_tokenizer("mistral", padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    torch.manual_seed(seed)
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        sliding_window=None,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = LlavaNextConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)  # biases, norms and image_newline random too
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="module")
def model(folder: str) -> MultimodalEmbedder:
    return MultimodalEmbedder(folder, device="cpu", query_instruction=CIR)


def official_prompt(text, image, q_or_c, task_instruction=None) -> str:
    """The prompt the official ``prepare_text_input`` returns, spelled out branch by branch."""
    if q_or_c == "q":
        prompt = (
            "[INST] \n <instruct>  <query>"
            if task_instruction is None
            else f"[INST] \n <instruct> {task_instruction} <query> "
        )
    else:
        prompt = "[INST] "
    if text is not None:
        prompt = f"{prompt} {text} \n"
    if image is not None:
        prompt = f"{prompt} <image>"
    return f"{prompt} [/INST]"


def expected(folder: str, texts, images, q_or_c, task_instruction=None) -> np.ndarray:
    """Each item alone through transformers (no padding), as the official encode computes it."""
    from PIL import Image
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    processor = LlavaNextProcessor.from_pretrained(folder)
    reference = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    rows = []
    for text, image in zip(texts, images, strict=True):
        prompt = official_prompt(text, image, q_or_c, task_instruction)
        if image is not None:
            picture = Image.open(image).resize((512, 512)).convert("RGB")
            inputs = processor(images=[picture], text=[prompt], return_tensors="pt", padding=True)
        else:
            inputs = processor(text=[prompt], return_tensors="pt", padding=True)
        with torch.no_grad():
            hidden = reference(**inputs, output_hidden_states=True).hidden_states[-1][:, -1, :]
        rows.append(torch.nn.functional.normalize(hidden, dim=-1)[0].numpy())
    return np.stack(rows)


TEXTS = ["a cat on a sofa", "make the background dark", "a rocket launch at dawn over the sea"]


def test_the_folder_loads_as_mllm(model, folder):
    assert isinstance(model, MLLMEmbedder) and model.settings.kind == "mllm"
    assert model.settings_origin["kind"] == "config.json" and model.dim == 32
    assert model.tokenizer.padding_side == "left"


def test_texts_images_and_composed_queries_match_transformers(model, folder, photos):
    items_t = [TEXTS[0], None, TEXTS[1], TEXTS[2], None]
    items_i = [None, photos[0], photos[2], None, photos[3]]  # camera.png is grayscale
    got = model.encode_queries(items_t, images=items_i)
    want = expected(folder, items_t, items_i, "q", CIR)
    assert np.abs(got - want).max() < 1e-5
    corpus = model.encode_corpus(items_t, images=items_i)
    assert np.abs(corpus - expected(folder, items_t, items_i, "c")).max() < 1e-5
    # the query and candidate prompts give different vectors, as the instruction does
    assert np.abs(got - corpus).max() > 1e-2
    plain = model.encode(items_t, images=items_i)
    assert np.abs(plain - corpus).max() < 1e-6
    untold = model.encode(items_t, images=items_i, instruction="Find it: ")
    assert np.abs(untold - expected(folder, items_t, items_i, "q", "Find it: ")).max() < 1e-5
    one = model.encode_queries(TEXTS[1], images=photos[2])
    assert one.shape == (32,) and np.abs(one - got[2]).max() < 1e-5
    assert abs(float(np.linalg.norm(one)) - 1.0) < 1e-5


def test_a_query_without_instruction_uses_the_bare_template(folder, photos):
    bare = MultimodalEmbedder(folder, device="cpu")
    got = bare.encode_queries([TEXTS[0]], images=[photos[1]])
    assert np.abs(got - expected(folder, [TEXTS[0]], [photos[1]], "q")).max() < 1e-5


def test_batches_of_one_and_mixed_batches_agree(model, photos):
    texts = [TEXTS[i % 3] if i % 2 == 0 else None for i in range(6)]
    images = [photos[i] if i % 3 else None for i in range(6)]
    texts[3] = TEXTS[1]
    batched = model.encode_corpus(texts, images=images, batch_size=6)
    single = model.encode_corpus(texts, images=images, batch_size=1)
    assert np.abs(batched - single).max() < 1e-5


def test_save_reload_settings_and_errors(model, folder, photos, tmp_path):
    out = tmp_path / "saved"
    model.save_pretrained(out)
    saved = json.loads((out / "bgekit.json").read_text())["multimodal_embedder"]
    assert saved["kind"] == "mllm" and saved["query_instruction"] == CIR
    reloaded = MultimodalEmbedder(str(out), device="cpu")
    assert isinstance(reloaded, MLLMEmbedder) and reloaded.settings_origin["kind"] == "bgekit.json"
    assert (
        np.abs(
            reloaded.encode_queries(TEXTS[0], images=photos[0])
            - model.encode_queries(TEXTS[0], images=photos[0])
        ).max()
        < 1e-6
    )
    with pytest.raises(ConfigError, match="passage_instruction"):
        MultimodalEmbedder(folder, device="cpu", passage_instruction="x: ")
    with pytest.raises(InputError, match=r"item 1: its prompt is \d+ tokens"):
        MultimodalEmbedder(folder, device="cpu", max_length=64).encode_corpus(["a", "b " * 80])
    with pytest.raises(ConfigError, match="whole prompts"):
        model.encode_features([{"input_ids": [1, 2]}])


def test_index_and_eval_cli_run_an_mllm_folder(folder, photos, tmp_path, capsys):
    from bgekit.cli.main import main

    dataset = tmp_path / "photos"
    dataset.mkdir()
    rel = [os.path.relpath(p, dataset) for p in photos[:4]]
    (dataset / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "image": p}) + "\n" for i, p in enumerate(rel))
    )
    (dataset / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "image": p}) + "\n" for i, p in enumerate(rel))
    )
    (dataset / "qrels").mkdir()
    (dataset / "qrels" / "test.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    argv = ["eval", "--model", folder, "--dataset", str(dataset), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--format", "json", "--k-values", "1", "3", "--main-score", "ndcg_at_3"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["num_documents"] == 4 and 0.0 < row["scores"]["recall_at_3"] <= 1.0


def test_two_devices_give_the_single_device_vectors(folder, model, photos):
    texts = [TEXTS[0], None, TEXTS[1], None, TEXTS[2]]
    images = [None, photos[1], photos[2], photos[3], None]
    with MultimodalEmbedder(
        folder, devices=["cpu", "cpu"], worker_timeout=300, query_instruction=CIR
    ) as pooled:
        assert type(pooled) is MLLMEmbedder
        out = pooled.encode_queries(texts, images=images)
    np.testing.assert_allclose(out, model.encode_queries(texts, images=images), atol=1e-6)


def test_the_server_runs_an_mllm_folder_as_items(model, photos):
    """Whole prompts: texts alone, images and composed items over HTTP equal encode / encode_queries."""
    pytest.importorskip("fastapi")
    import base64
    from pathlib import Path

    from fastapi.testclient import TestClient

    from bgekit.serve import create_app

    def image(path: str) -> dict:
        return {"image": base64.b64encode(Path(path).read_bytes()).decode()}

    def vectors(response) -> np.ndarray:
        assert response.status_code == 200, response.text
        return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)

    with TestClient(create_app(embedder=model), base_url="http://localhost") as client:
        served = vectors(client.post("/v1/embeddings", json={"input": [TEXTS[0], image(photos[0])]}))
        np.testing.assert_allclose(
            served, model.encode([TEXTS[0], None], images=[None, photos[0]]), atol=1e-5
        )
        query = [TEXTS[1], TEXTS[2]]
        served = vectors(client.post("/v1/embeddings", json={"input": query, "input_type": "query"}))
        np.testing.assert_allclose(served, model.encode_queries(query), atol=1e-5)
        composed = [{"text": TEXTS[1], **image(photos[2])}]
        served = vectors(client.post("/v1/embeddings", json={"input": composed, "input_type": "query"}))
        np.testing.assert_allclose(served, model.encode_queries([TEXTS[1]], images=[photos[2]]), atol=1e-5)
        tei = client.post("/embed", json={"inputs": [TEXTS[0]]})
        assert tei.status_code == 200, tei.text
        np.testing.assert_allclose(tei.json(), model.encode([TEXTS[0]]), atol=1e-5)
        assert client.get("/health").status_code == 200  # the warm-up ran the item protocol
