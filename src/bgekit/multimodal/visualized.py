"""Visualized-BGE: a BGE text model that reads an EVA02-CLIP image's patch tokens before its text.

Visualized-BGE (``BAAI/bge-visualized``: ``Visualized_base_en_v1.5.pth`` on bge-base-en-v1.5 with
EVA02-CLIP-B-16, ``Visualized_m3.pth`` on bge-m3 with EVA02-CLIP-L-14) embeds, as FlagEmbedding's
``Visualized_BGE.encode`` does:

* a text: the text model as usual, the CLS vector;
* an image with a text (composed): ``[CLS] + projected image patch tokens + text tokens`` through the text
  model's encoder (image tokens at positions 1..P, the text after them), the CLS vector;
* an image alone: the same with an empty text (``[CLS]`` + patches + ``[SEP]``).

Vectors are L2-normalised. The EVA vision tower is written here (about a hundred lines, state-dict names
as the official checkpoints have them) because timm, whose ``eva`` models implement EVA02, imports
torchvision, and PyPI's torchvision wheel for x86-64 Linux needs CUDA torch: with CPU torch it fails on
import. The text model is ``transformers``' own (BERT or XLM-RoBERTa).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bgekit.engine import BatchEngine, pad_sequences, tokenize_texts
from bgekit.errors import ConfigError, InputError, ModelLoadError
from bgekit.inference.heads import finish_dense
from bgekit.io import replace_folder
from bgekit.models.loading import load_config, load_tokenizer
from bgekit.models.settings import read_saved_settings, write_saved_settings
from bgekit.multimodal.embedder import MultimodalEmbedder
from bgekit.multimodal.images import ImageInputError, _open, to_rgb
from bgekit.multimodal.settings import SETTINGS_SECTION

VISION_SECTION = "visualized_bge_vision"
"""The ``bgekit.json`` section holding the vision tower's shape (:class:`EvaVisionConfig`)."""

WEIGHTS_FILE = "model.safetensors"
"""The whole Visualized-BGE state dict, under the official checkpoint's names (rope tables left out)."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_UNUSED_PREFIXES = ("model_visual.logit_scale", "model_visual.visual.norm.", "model_visual.visual.head.")
"""Official keys Visualized-BGE never reads: it takes the vision blocks' output before the final norm and
the CLIP head (``EVAVisionTransformer.forward(return_all_features=True)``)."""


@dataclass
class EvaVisionConfig:
    """The shape of an EVA02-CLIP vision tower as Visualized-BGE uses it (rope, SwiGLU, sub-LayerNorms).

    Attributes:
        image_size / patch_size: input pixels per side and per patch side (224 / 16 for B-16, 224 / 14
            for L-14).
        width / layers / heads: hidden size, blocks, attention heads (head width 64 in both published).
        mlp_hidden: SwiGLU hidden size.
        pt_hw_seq_len: the patch grid side the rotary table was trained for (16 in both published); the
            table is interpolated to this tower's grid as EVA's ``intp_freq`` does.

    Example:
        >>> EvaVisionConfig().num_patches
        196
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_hidden: int = 2048
    pt_hw_seq_len: int = 16

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field.name}={value!r} is not valid; expected a positive integer")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ConfigError(
                f"width={self.width} with heads={self.heads} gives a head width that is not a multiple of 4 "
                "(the 2-d rotary embedding needs one)"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], prefix: str = "model_visual.visual.", head_width: int = 64
    ) -> EvaVisionConfig:
        """Read the shape from official weights (heads from ``head_width``, 64 in EVA02-CLIP B and L)."""
        width = int(state[prefix + "cls_token"].shape[-1])
        patch = int(state[prefix + "patch_embed.proj.weight"].shape[-1])
        positions = int(state[prefix + "pos_embed"].shape[1]) - 1
        grid = math.isqrt(positions)
        if grid * grid != positions:
            raise ModelLoadError(f"pos_embed holds {positions} patch positions, not a square grid")
        layers = len({k.split(".")[3] for k in state if k.startswith(prefix + "blocks.")})
        return cls(
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=max(1, width // head_width),
            mlp_hidden=int(state[prefix + "blocks.0.mlp.w1.weight"].shape[0]),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ vision tower
def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """EVA's rotation of interleaved pairs: (x0, x1, x2, x3...) -> (-x1, x0, -x3, x2...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def _rope_tables(config: EvaVisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA's ``VisionRotaryEmbeddingFast`` tables (cos, sin), (patches, head width)."""
    dim = config.width // config.heads // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(config.grid) / config.grid * config.pt_hw_seq_len
    freqs = torch.einsum("..., f -> ... f", t, freqs).repeat_interleave(2, dim=-1)  # (grid, dim)
    grid = config.grid
    table = torch.cat(
        (freqs[:, None, :].expand(grid, grid, dim), freqs[None, :, :].expand(grid, grid, dim)), dim=-1
    )
    table = table.reshape(-1, table.shape[-1])
    return table.cos(), table.sin()


class _Attention(nn.Module):
    def __init__(self, config: EvaVisionConfig) -> None:
        super().__init__()
        width, self.heads = config.width, config.heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.inner_attn_ln = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(F.linear(x, self.k_proj.weight))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        # rotary positions on the patches only; the class token keeps none
        q = torch.cat((q[:, :, :1], q[:, :, 1:] * cos + _rotate_half(q[:, :, 1:]) * sin), dim=-2).type_as(v)
        k = torch.cat((k[:, :, :1], k[:, :, 1:] * cos + _rotate_half(k[:, :, 1:]) * sin), dim=-2).type_as(v)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(self.inner_attn_ln(out.transpose(1, 2).reshape(b, n, -1)))


class _SwiGLU(nn.Module):
    def __init__(self, config: EvaVisionConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.width, config.mlp_hidden)
        self.w2 = nn.Linear(config.width, config.mlp_hidden)
        self.ffn_ln = nn.LayerNorm(config.mlp_hidden, eps=1e-6)
        self.w3 = nn.Linear(config.mlp_hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class _Block(nn.Module):
    def __init__(self, config: EvaVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=1e-6)
        self.attn = _Attention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=1e-6)
        self.mlp = _SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class EvaVisionTower(nn.Module):
    """EVA02-CLIP's vision transformer up to its last block: (B, 3, H, W) pixels -> (B, 1 + P, width).

    Parameter names are those of EVA-CLIP's ``EVAVisionTransformer`` (``blocks.0.attn.q_proj.weight``,
    ``blocks.0.mlp.w1.weight``...), so official weights load as they are.

    Example:
        >>> tower = EvaVisionTower(EvaVisionConfig(image_size=32, patch_size=16, width=32, heads=2,
        ...                                         layers=1, mlp_hidden=64))
        >>> tower(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 5, 32])
    """

    def __init__(self, config: EvaVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.ModuleDict(
            {"proj": nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)}
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.width))
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.layers)])
        cos, sin = _rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed["proj"](pixels).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return x


# ------------------------------------------------------------------------------------------ model
class VisualizedBGEModel(nn.Module):
    """The text model, the EVA vision tower and ``visual_proj``, with the official encode paths.

    Example:
        >>> net = MultimodalEmbedder("vis-bge/").model                       # doctest: +SKIP
        >>> net.encode_mm(pixels, input_ids, attention_mask).shape            # doctest: +SKIP
        torch.Size([1, 768])
    """

    def __init__(self, text_config: Any, vision: EvaVisionConfig) -> None:
        from transformers import AutoModel

        super().__init__()
        self.text = AutoModel.from_config(text_config)
        self.visual = EvaVisionTower(vision)
        self.visual_proj = nn.Linear(vision.width, vision.width)

    def _encode(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        extended = (1.0 - mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
        hidden = self.text.encoder(embeddings, attention_mask=extended, return_dict=True)[0]
        return hidden[:, 0]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """CLS vectors of texts (``Visualized_BGE.encode_text``, before normalisation)."""
        embeddings = self.text.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._encode(embeddings, attention_mask)

    def encode_mm(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """CLS vectors of images with texts (``Visualized_BGE.encode_mm``, before normalisation)."""
        device = input_ids.device
        image = self.visual_proj(self.visual(pixels)[:, 1:])
        patches = image.shape[1]
        emb = self.text.embeddings
        image = emb.LayerNorm(image + emb.position_embeddings(torch.arange(1, 1 + patches, device=device)))
        length = input_ids.shape[1]
        positions = torch.cat(
            (
                torch.zeros(1, dtype=torch.long, device=device),
                torch.arange(1 + patches, patches + length, device=device),
            )
        )
        text = emb(
            input_ids=input_ids,
            position_ids=positions.unsqueeze(0).expand(input_ids.shape[0], -1),
            token_type_ids=torch.zeros_like(input_ids),
        )
        sequence = torch.cat((text[:, :1], image, text[:, 1:]), dim=1)
        ones = torch.ones(input_ids.shape[0], patches, dtype=attention_mask.dtype, device=device)
        return self._encode(sequence, torch.cat((ones, attention_mask), dim=1))


def from_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``Visualized_BGE.state_dict()`` names -> :class:`VisualizedBGEModel` names.

    Raises:
        ModelLoadError: a key this architecture does not know (naming it).
    """
    renames = (
        ("bge_embeddings.", "text.embeddings."),
        ("bge_encoder.", "text.encoder."),
        ("bge_pooler.", "text.pooler."),
        ("model_visual.visual.", "visual."),
        ("visual_proj.", "visual_proj."),
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_UNUSED_PREFIXES) or ".rope." in key:
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise ModelLoadError(f"unexpected key {key!r} in a Visualized-BGE state dict")
    return out


def _official_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official state dict as bgekit saves it: rope tables (recomputed, and shared between blocks,
    which safetensors cannot store) and keys Visualized-BGE never reads left out."""
    return {
        k: v.contiguous()
        for k, v in state.items()
        if ".rope." not in k and not k.startswith(_UNUSED_PREFIXES)
    }


_REQUIRED_KEYS = (
    "bge_embeddings.word_embeddings.weight",
    "model_visual.visual.cls_token",
    "model_visual.visual.pos_embed",
    "visual_proj.weight",
)


def _check_official(state: Mapping[str, Any], source: str) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise ModelLoadError(
            f"{source} is not a Visualized-BGE state dict: it lacks {missing} (expected the keys of "
            "FlagEmbedding's Visualized_BGE.state_dict(), as in Visualized_base_en_v1.5.pth / Visualized_m3.pth)"
        )


# ------------------------------------------------------------------------------------ converting
def convert_visualized_bge(
    checkpoint: str | os.PathLike[str],
    text_model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    head_width: int = 64,
    max_length: int | None = None,
) -> str:
    """Write a bgekit folder for an official Visualized-BGE checkpoint, loadable by ``MultimodalEmbedder``.

    Args:
        checkpoint: ``Visualized_base_en_v1.5.pth`` or ``Visualized_m3.pth`` (a ``state_dict`` saved with
            ``torch.save``; read with ``weights_only=True``).
        text_model: the BGE text model's folder (``BAAI/bge-base-en-v1.5`` or ``BAAI/bge-m3``): its
            ``config.json`` and tokenizer are used; its weights are not (the checkpoint holds them).
        output: the folder to write (replaced as a whole, atomically): ``config.json``, the tokenizer,
            ``model.safetensors`` (official key names) and ``bgekit.json``.
        head_width: the vision tower's head width (64 in EVA02-CLIP B-16 and L-14).
        max_length: text token limit to save (default: the text model's positions).

    Returns:
        ``output`` as a string.

    Example:
        >>> convert_visualized_bge("Visualized_base_en_v1.5.pth", "bge-base-en-v1.5/", "vis-bge/")  # doctest: +SKIP
        >>> MultimodalEmbedder("vis-bge/").encode(images="cat.jpg").shape                          # doctest: +SKIP
        (768,)
    """
    checkpoint, text_model, output = os.fspath(checkpoint), os.fspath(text_model), os.fspath(output)
    if not os.path.isfile(checkpoint):
        raise ModelLoadError(f"checkpoint {checkpoint!r} not found")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not read {checkpoint!r} as a torch state dict: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{checkpoint!r} holds a {type(state).__name__}, not a state dict")
    _check_official(state, repr(checkpoint))
    config = load_config(text_model)
    tokenizer = load_tokenizer(text_model)
    vision = EvaVisionConfig.from_state_dict(state, head_width=head_width)
    _check_shapes(config, vision, state, f"{checkpoint!r} with {text_model!r}")
    settings: dict[str, Any] = {"kind": "visualized_bge", "normalize": True}
    if max_length is not None:
        settings["max_length"] = max_length
    _write_folder(output, config, tokenizer, _official_weights(state), vision, settings)
    return output


def _check_shapes(config: Any, vision: EvaVisionConfig, state: Mapping[str, torch.Tensor], what: str) -> None:
    hidden = int(getattr(config, "hidden_size", -1))
    if hidden != vision.width:
        raise ModelLoadError(
            f"{what}: the text model's hidden_size={hidden} differs from the vision tower's width "
            f"{vision.width} (Visualized-BGE projects patches into the text model's space)"
        )
    rows = int(state["bge_embeddings.word_embeddings.weight"].shape[0])
    if rows != int(config.vocab_size):
        raise ModelLoadError(
            f"{what}: the checkpoint's vocabulary has {rows} tokens, the text model's config "
            f"{config.vocab_size}: pair the checkpoint with the text model it was trained on"
        )


def _write_folder(
    output: str,
    config: Any,
    tokenizer: Any,
    weights: Mapping[str, torch.Tensor],
    vision: EvaVisionConfig,
    settings: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(output))}.new.")
    try:
        config.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        save_file(dict(weights), os.path.join(staged, WEIGHTS_FILE), metadata={"format": "pt"})
        write_saved_settings(staged, SETTINGS_SECTION, settings)
        write_saved_settings(staged, VISION_SECTION, vision.to_dict())
        replace_folder(staged, output)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------ images
def eva_pixels(image: Any, size: int) -> torch.Tensor:
    """One image as EVA-CLIP's evaluation transform gives it: (3, size, size) float32.

    The transform of ``eva_clip.transform.image_transform(is_train=False)``, on PIL as torchvision runs
    it: shorter edge to ``size`` (bicubic; the longer ``int(size * long / short)``), a centre crop
    (offsets ``int(round(...))``), RGB, ``/ 255``, then OpenAI CLIP's mean and std. A file path is
    resized in its stored mode and converted to RGB afterwards, as the official code does.

    Example:
        >>> eva_pixels(np.zeros((300, 400, 3), np.uint8), 224).shape
        torch.Size([3, 224, 224])
    """
    from PIL import Image

    if isinstance(image, str | os.PathLike):
        picture = _open(os.fspath(image))
    elif isinstance(image, Image.Image):
        picture = image
    else:
        picture = to_rgb(image)
    width, height = picture.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        picture = picture.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    picture = picture.crop((left, top, left + size, top + size)).convert("RGB")
    array = torch.from_numpy(np.array(picture, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    mean = torch.as_tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(-1, 1, 1)
    return array.to(torch.float32).div(255).sub_(mean).div_(std)


# ------------------------------------------------------------------------------------ embedder
class VisualizedBGEEmbedder(MultimodalEmbedder):
    """:class:`MultimodalEmbedder` for Visualized-BGE folders (``MultimodalEmbedder(path)`` returns one).

    Texts, images and composed image + text items, with ``encode``/``encode_queries``/``encode_corpus``
    as the CLIP kind. A composed item's text follows the image's patch tokens in the text model's
    positions, so its tokens are cut at ``max_position_embeddings - patches`` (316 for bge-base with
    B-16's 196 patches); a text alone keeps ``max_length``.

    Example:
        >>> model = MultimodalEmbedder("vis-bge/")                                   # doctest: +SKIP
        >>> q = model.encode_queries("with a red hat", images="person.jpg")          # doctest: +SKIP
    """

    def _init_towers(self) -> None:
        if not os.path.isfile(os.path.join(self.folder, WEIGHTS_FILE)):
            raise ModelLoadError(
                f"{self.folder!r} has no {WEIGHTS_FILE}: write a Visualized-BGE folder with "
                "bgekit.multimodal.visualized.convert_visualized_bge(checkpoint.pth, text_model, folder)"
            )
        saved = read_saved_settings(self.folder, VISION_SECTION)
        if not saved:
            raise ModelLoadError(
                f"{self.folder!r}: bgekit.json has no {VISION_SECTION!r} section (the vision tower's shape)"
            )
        try:
            self.vision = EvaVisionConfig(**saved)
        except TypeError as exc:
            raise ConfigError(f"{self.folder!r}: bgekit.json {VISION_SECTION}: {exc}") from exc
        self.tokenizer = load_tokenizer(self.folder, padding_side="right")
        if self.tokenizer.pad_token_id is None:
            raise ModelLoadError(f"{self.folder!r}: the tokenizer has no padding token")
        limit = self.max_length_limit
        if self.settings.max_length is not None and self.settings.max_length > limit:
            raise ConfigError(
                f"max_length={self.settings.max_length} exceeds the text model's {limit} positions"
            )
        self.max_length = self.settings.max_length or limit
        self.dim = int(self.config.hidden_size)
        self.image_tokens = self.vision.num_patches
        """Tokens one image adds to its item's sequence: its patches (the vision CLS is not used)."""
        self._empty_text = tokenize_texts(self.tokenizer, [""], self.max_length)[0]

    @property
    def max_length_limit(self) -> int:
        """The longest text the text model takes (its position count)."""
        limit = int(self.config.max_position_embeddings)
        # XLM-RoBERTa numbers positions from padding_idx + 1, so two fewer tokens fit
        return limit - 2 if getattr(self.config, "model_type", "") in ("xlm-roberta", "roberta") else limit

    def _load_model(self) -> Any:
        if self._model is None:
            from safetensors.torch import load_file

            path = os.path.join(self.folder, WEIGHTS_FILE)
            try:
                state = load_file(path)
            except Exception as exc:
                raise ModelLoadError(f"could not read {path!r}: {exc}") from exc
            _check_official(state, repr(path))
            _check_shapes(self.config, self.vision, state, repr(self.folder))
            model = VisualizedBGEModel(self.config, self.vision)
            result = model.load_state_dict(from_official_state_dict(state), strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("text.pooler.")]
            if missing or result.unexpected_keys:
                raise ModelLoadError(
                    f"{path!r} does not fit the architecture in bgekit.json: missing {missing[:5]}, "
                    f"unexpected {result.unexpected_keys[:5]}"
                )
            self._model = model.eval().to(self.device, dtype=self.torch_dtype)
        return self._model

    def tokenize_items(
        self, texts: Sequence[str | None], images: Sequence[Any], max_length: int, *, truncate: bool = True
    ) -> list[Any]:
        """As ``MultimodalEmbedder.tokenize_items``; a text paired with an image is cut to the positions
        its image's patches leave."""
        n = len(texts)
        features: list[Any] = [None] * n
        composed_limit = max(2, min(max_length, int(self.config.max_position_embeddings) - self.image_tokens))
        for limit, rows in (
            (max_length, [i for i in range(n) if texts[i] is not None and images[i] is None]),
            (composed_limit, [i for i in range(n) if texts[i] is not None and images[i] is not None]),
        ):
            if rows:
                tokenized = tokenize_texts(
                    self.tokenizer, [str(texts[i]) for i in rows], limit, truncation=truncate
                )
                for i, feature in zip(rows, tokenized, strict=True):
                    if len(feature["input_ids"]) > limit:  # truncate=False: the caller asked for no cut
                        raise InputError(
                            f"item {i}: its text is {len(feature['input_ids'])} tokens, over the {limit} "
                            "positions left beside its image; shorten it or let it be truncated"
                        )
                    features[i] = feature
        return features

    def _run(
        self,
        features: Sequence[dict[str, list[int]] | None],
        images: Sequence[Any],
        batch_size: int,
        show_progress: bool | None,
        position_offset: int,
        normalize: bool,
    ) -> np.ndarray:
        n = len(features)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # an image alone is an image with an empty text, as the official encode_image does
        feats = [f if f is not None else self._empty_text for f in features]
        lengths = [
            len(feats[i]["input_ids"]) + (self.image_tokens if images[i] is not None else 0) for i in range(n)
        ]
        model = self._load_model()
        pad_id = int(self.tokenizer.pad_token_id)

        def step(indices: list[int]) -> torch.Tensor:
            total = torch.zeros(len(indices), self.dim, dtype=torch.float32, device=self.device)
            text_rows = [r for r, i in enumerate(indices) if images[i] is None]
            image_rows = [r for r, i in enumerate(indices) if images[i] is not None]
            with torch.inference_mode():
                if text_rows:
                    batch = pad_sequences([feats[indices[r]] for r in text_rows], pad_id)
                    total[text_rows] = model.encode_text(
                        batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
                    ).float()
                if image_rows:
                    batch = pad_sequences([feats[indices[r]] for r in image_rows], pad_id)
                    pixels = self.pixel_values([images[indices[r]] for r in image_rows])
                    total[image_rows] = model.encode_mm(
                        pixels, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
                    ).float()
            return finish_dense(total, truncate_dim=None, normalize=normalize).cpu()

        engine = BatchEngine(
            batch_size=batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            show_progress=show_progress,
            desc="Encoding",
            position_offset=position_offset,
        )
        return engine.run(lengths, step).numpy()

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """EVA-CLIP's input pixels of checked images (see :func:`eva_pixels`)."""
        out = []
        for image in images:
            try:
                out.append(eva_pixels(image, self.vision.image_size))
            except (OSError, ValueError) as exc:  # changed on disk since the call checked it
                raise ImageInputError(f"image {image!r} can no longer be read: {exc}") from exc
        return torch.stack(out).to(self.device, dtype=self.torch_dtype)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Save the folder (``config.json``, tokenizer, ``model.safetensors``, ``bgekit.json``) so
        ``MultimodalEmbedder(path)`` reloads it as it is; the folder is replaced atomically.

        Example:
            >>> model.save_pretrained("my-vis-bge/")   # doctest: +SKIP
        """
        from safetensors.torch import load_file

        state = load_file(os.path.join(self.folder, WEIGHTS_FILE))
        settings = self.settings.to_dict()
        if settings.get("dtype") is None:
            settings.pop("dtype")
        _write_folder(os.fspath(path), self.config, self.tokenizer, state, self.vision, settings)
