"""BGE-VL-MLLM (MMRet-MLLM): a LLaVA-NeXT model whose last prompt token's hidden state is the vector.

BAAI/BGE-VL-MLLM-S1 and -S2 ship a ``trust_remote_code`` modeling file; bgekit runs the same computation
on transformers' own ``LlavaNextForConditionalGeneration`` and ``LlavaNextProcessor`` (no shipped code
runs). Every item becomes one chat prompt, as the official ``prepare_text_input`` writes it:

- a query: ``"[INST] \\n <instruct> {instruction} <query>  {text} \\n <image> [/INST]"`` (the text and the
  image parts only where the item has them; without an instruction ``"<instruct>  <query>"``);
- a candidate (corpus item): ``"[INST]  {text} \\n <image> [/INST]"``.

Images are read, resized to 512 x 512 and converted to RGB (in that order, as the official
``data_process``), then LLaVA-NeXT's processor tiles them. The vector is the final hidden state (after the
last norm) of the prompt's last token, L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bgekit.engine import BatchEngine
from bgekit.errors import ConfigError, InputError, ModelLoadError
from bgekit.inference.heads import finish_dense
from bgekit.inference.runtime import check_batch_size
from bgekit.models.loading import load_pretrained
from bgekit.models.settings import write_saved_settings
from bgekit.multimodal.embedder import MultimodalEmbedder, Role
from bgekit.multimodal.images import ImageInputError
from bgekit.multimodal.settings import SETTINGS_SECTION

IMAGE_SIZE = (512, 512)
"""Every image is resized to this before the processor tiles it (the official ``data_process``)."""


def query_prompt(text: str | None, has_image: bool, instruction: str | None) -> str:
    """The prompt of a query (see the module docstring).

    Example:
        >>> query_prompt("make it night", True, "Retrieve the target image: ")
        '[INST] \\n <instruct> Retrieve the target image:  <query>  make it night \\n <image> [/INST]'
    """
    prompt = (
        "[INST] \n <instruct>  <query>"
        if instruction is None
        else f"[INST] \n <instruct> {instruction} <query> "
    )
    return _finish(prompt, text, has_image)


def candidate_prompt(text: str | None, has_image: bool) -> str:
    """The prompt of a corpus item (see the module docstring).

    Example:
        >>> candidate_prompt(None, True)
        '[INST]  <image> [/INST]'
    """
    return _finish("[INST] ", text, has_image)


def _finish(prompt: str, text: str | None, has_image: bool) -> str:
    if text is not None:
        prompt = f"{prompt} {text} \n"
    if has_image:
        prompt = f"{prompt} <image>"
    return f"{prompt} [/INST]"


class MLLMEmbedder(MultimodalEmbedder):
    """A BGE-VL-MLLM (LLaVA-NeXT) embedder; ``MultimodalEmbedder(folder)`` returns one when the folder's
    ``bgekit.json`` says ``"kind": "mllm"``, its ``config.json`` is a ``llava_next`` model, or the name is
    a published BGE-VL-MLLM checkpoint.

    Queries take the task instruction inside their prompt (``query_instruction``; the official code warns
    without one); corpus items take none (``passage_instruction`` is refused). ``encode`` writes candidate
    prompts, or query prompts when given an ``instruction``. Texts are not truncated (as the official
    code): a prompt longer than ``max_length`` tokens, image tokens included, is refused.

    Example:
        >>> model = MultimodalEmbedder("BGE-VL-MLLM-S1/", query_instruction="Retrieve the target image: ")  # doctest: +SKIP
        >>> q = model.encode_queries("make the background dark", images="cat.jpg")  # doctest: +SKIP
        >>> p = model.encode_corpus(images=["a.jpg", "b.jpg"])                     # doctest: +SKIP
    """

    def _init_towers(self) -> None:
        from transformers import LlavaNextProcessor

        settings = self.settings
        if settings.passage_instruction or settings.query_instruction_format != "{}{}":
            raise ConfigError(
                "a BGE-VL-MLLM model puts only the query's task instruction in its prompt: drop "
                "passage_instruction and query_instruction_format"
            )
        try:
            processor = LlavaNextProcessor.from_pretrained(self.folder, use_fast=False)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"could not load the LLaVA-NeXT processor (tokenizer with an <image> token and image "
                f"processor) of {self.folder!r}: {exc}"
            ) from exc
        vision_config = self.config.vision_config
        # older processor configs lack these; the model's config says them
        processor.patch_size = processor.patch_size or int(vision_config.patch_size)
        processor.vision_feature_select_strategy = (
            processor.vision_feature_select_strategy or self.config.vision_feature_select_strategy
        )
        if getattr(vision_config, "model_type", None) == "clip_vision_model":
            processor.num_additional_image_tokens = 1  # CLIP's class token, dropped by "default"
        processor.tokenizer.padding_side = "left"  # the last position is every prompt's last token
        if processor.tokenizer.pad_token_id is None:
            processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        limit = int(self.config.text_config.max_position_embeddings)
        if settings.max_length is not None and settings.max_length > limit:
            raise ConfigError(f"max_length={settings.max_length} exceeds the text model's {limit} positions")
        self.max_length = settings.max_length or limit
        self.dim = int(self.config.text_config.hidden_size)
        from PIL import Image

        probe = processor(images=[Image.new("RGB", IMAGE_SIZE)], text=["<image>"], return_tensors="pt")
        self.image_tokens = int(probe["input_ids"].shape[1]) - len(self.tokenizer("")["input_ids"])
        """Tokens one (512 x 512) image becomes in the prompt (its ``<image>`` expanded), for the budget."""

    @property
    def max_length_limit(self) -> int:
        return int(self.config.text_config.max_position_embeddings)

    def _load_model(self) -> Any:
        if self._model is None:
            from transformers import LlavaNextForConditionalGeneration

            self._model = load_pretrained(
                LlavaNextForConditionalGeneration, self.folder, dtype=self.torch_dtype, device=self.device
            )
        return self._model

    def encode(
        self,
        texts: Any = None,
        images: Any = None,
        *,
        instruction: str | None = None,
        instruction_format: str = "{}{}",
        **kwargs: Any,
    ) -> Any:
        """Encode items with candidate prompts, or with query prompts holding ``instruction`` when given.

        Example:
            >>> model.encode(images=["a.jpg"]).shape   # doctest: +SKIP
            (1, 4096)
        """
        if instruction_format != "{}{}":
            raise ConfigError(
                "instruction_format is not used by BGE-VL-MLLM: the prompt places the instruction"
            )
        self._task_instruction = instruction
        try:
            return self._encode(texts, images, "query" if instruction else "plain", **kwargs)
        finally:
            self._task_instruction = None

    _task_instruction: str | None = None

    def prepare_items(self, texts: Any, images: Any, role: Role) -> tuple[list[str | None], list[Any], bool]:
        """Pair and check items as ``MultimodalEmbedder.prepare_items``, then write each one's prompt.

        Returns:
            The prompts (one per item), the checked images (``None`` where an item has none), and
            whether one item was given.
        """
        text_list, image_list, single = super().prepare_items(texts, images, "plain")
        if role == "query":
            instruction = self._task_instruction or self.settings.query_instruction
            prompts = [
                query_prompt(t, i is not None, instruction)
                for t, i in zip(text_list, image_list, strict=True)
            ]
        else:
            prompts = [candidate_prompt(t, i is not None) for t, i in zip(text_list, image_list, strict=True)]
        return list(prompts), image_list, single

    token_features = False  # whole prompts: the server runs even text-only requests as items

    def tokenize_items(
        self, texts: Sequence[str | None], images: Sequence[Any], max_length: int, *, truncate: bool = True
    ) -> list[Any]:
        """The prompts themselves (see :meth:`prepare_items`), after checking each one fits ``max_length``
        with its image tokens: the processor tokenizes a batch's prompts with its images, and prompts are
        never cut, as in the official code (``truncate`` has no effect)."""
        prompts = [str(t) for t in texts]
        if not prompts:
            return []
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for position, (row, image) in enumerate(zip(ids, images, strict=True)):
            length = len(row) + (self.image_tokens - 1 if image is not None else 0)
            if length > max_length:
                raise InputError(
                    f"item {position}: its prompt is {length} tokens (image tokens included), "
                    f"over max_length={max_length}; BGE-VL-MLLM does not truncate prompts"
                )
        return prompts

    def encode_tokenized(
        self,
        prepared: Sequence[Any],
        images: Sequence[Any],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = False,
        position_offset: int = 0,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """Run the model over prompts from :meth:`tokenize_items` and checked images on this device."""
        prompts = [str(p) for p in prepared]
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = [
            len(row) + (self.image_tokens - 1 if image is not None else 0)
            for row, image in zip(
                self.tokenizer(prompts, add_special_tokens=True)["input_ids"], images, strict=True
            )
        ]
        model = self._load_model()
        normalize = self.settings.normalize if normalize is None else normalize

        def step(indices: list[int]) -> torch.Tensor:
            pictures = [self._read_image(images[i]) for i in indices if images[i] is not None]
            inputs = self.processor(
                images=pictures or None,
                text=[prompts[i] for i in indices],
                return_tensors="pt",
                padding=True,
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
            with torch.inference_mode():
                hidden = model.model(**inputs).last_hidden_state
            return finish_dense(hidden[:, -1].float(), truncate_dim=None, normalize=normalize).cpu()

        engine = BatchEngine(
            batch_size=self.batch_size if batch_size is None else check_batch_size(batch_size),
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
            position_offset=position_offset,
        )
        return engine.run(lengths, step).numpy()

    @staticmethod
    def _read_image(image: Any) -> Any:
        """A checked image as the official code reads it: resized to 512 x 512, then converted to RGB."""
        from PIL import Image

        if isinstance(image, str | os.PathLike):
            try:
                with Image.open(image) as handle:
                    return handle.resize(IMAGE_SIZE).convert("RGB")
            except (OSError, ValueError) as exc:  # changed on disk since the call checked it
                raise ImageInputError(f"image {image!r} can no longer be read: {exc}") from exc
        return image.resize(IMAGE_SIZE).convert("RGB")

    def encode_features(
        self, features: Sequence[dict[str, list[int]]], heads: Any = None, **kwargs: Any
    ) -> np.ndarray:
        raise ConfigError(
            "BGE-VL-MLLM embeds whole prompts: use encode / encode_queries / encode_corpus (the server's "
            "text batching runs CLIP and Visualized-BGE models)"
        )

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Save weights (safetensors), the processor (tokenizer and image processor) and ``bgekit.json``.

        Example:
            >>> model.save_pretrained("my-bge-vl-mllm/")   # doctest: +SKIP
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        settings = self.settings.to_dict()
        if settings.get("dtype") is None:
            settings.pop("dtype")
        write_saved_settings(path, SETTINGS_SECTION, settings)
