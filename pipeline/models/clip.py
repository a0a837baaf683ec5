"""The frozen open_clip encoders: image embeddings for the base, text tokens for the refiner.

``paper`` uses ViT-H/14 (1024-d, as I2VGen-XL); ``tiny`` a small random CLIP built from the
same open_clip classes, so every code path runs without weights. Weights come only from a
local file through ``pipeline.models.weights``.
"""

from __future__ import annotations

from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.schema import ClipConfig
from pipeline.models.weights import load_into, read_state_dict

# A CLIP small enough for tests: 32-d embeddings, 2 layers per tower, 32x32 images.
TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clip_model_config(arch: str) -> dict[str, Any]:
    if arch == "tiny":
        return TINY_CLIP
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"clip.arch: unknown open_clip architecture {arch!r}")
    return cfg


def clip_embed_dim(cfg: ClipConfig) -> int:
    """Width of the image embedding (what the base's context gets)."""
    if cfg.arch == "hf":
        from pipeline.models.hf_clip import hf_clip_widths

        return hf_clip_widths(cfg)[0]
    return clip_model_config(cfg.arch)["embed_dim"]


def clip_text_width(cfg: ClipConfig) -> int:
    """Width of the text tokens (what the refiner's context gets)."""
    if cfg.arch == "hf":
        from pipeline.models.hf_clip import hf_clip_widths

        return hf_clip_widths(cfg)[1]
    return clip_model_config(cfg.arch)["text_cfg"]["width"]


def clip_pixels(pixels: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] ``(B, 3, H, W)`` -> CLIP's normalised ``(B, 3, size, size)`` input.

    The centre square is resized to CLIP's input size, as VGen and diffusers do; an input
    already at that size passes through unchanged.
    """
    height, width = pixels.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[..., top : top + side, left : left + side].float()
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return ((square + 1) / 2 - mean) / std


class FrozenOpenCLIP(nn.Module):
    """open_clip's CLIP, frozen; image -> one embedding token, text -> penultimate-layer tokens.

    Text follows VGen: all but the last transformer block, then ``ln_final`` (the last block
    is too specialised to the contrastive objective to be a good conditioning signal).
    """

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.arch = cfg.arch
        self.model = open_clip.CLIP(**clip_model_config(cfg.arch))
        if cfg.weights:
            load_into(self.model, read_state_dict(cfg.weights), source=f"clip.weights ({cfg.weights})")
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer("ViT-H-14")
        self.image_size = self.model.visual.image_size
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FrozenOpenCLIP":
        """Stays in eval mode: the encoder is frozen (no dropout, fixed statistics)."""
        return super().train(False)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] ``(B, 3, H, W)`` -> ``(B, 1, embed_dim)``."""
        size = self.image_size if isinstance(self.image_size, int) else self.image_size[0]
        x = clip_pixels(pixels, size, self.mean, self.std)
        return self.model.encode_image(x)[:, None, :]

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> ``(B, 77, text_width)`` penultimate-layer token features."""
        device = self.model.token_embedding.weight.device
        tokens = self.tokenizer(list(prompts)).to(device)
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding
        for block in m.transformer.resblocks[:-1]:
            x = block(x, attn_mask=m.attn_mask)
        return m.ln_final(x)
