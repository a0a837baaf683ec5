"""The frozen CLIP encoders of a diffusers-layout folder (``clip.arch: hf``).

The released I2VGen-XL ships two layouts: VGen's, whose encoders are one open_clip ViT-H/14
file (``FrozenOpenCLIP`` loads it), and diffusers', whose ``image_encoder/``,
``text_encoder/`` and ``tokenizer/`` are transformers models. This class reads the second
from local folders and answers the same two calls, so the cascade and the trainer do not
care which layout a user has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from torch import nn

from pipeline.config.schema import ClipConfig
from pipeline.models.clip import clip_pixels
from pipeline.models.weights import WeightsError

SUBFOLDERS = ("image_encoder", "text_encoder", "tokenizer")


def _root(cfg: ClipConfig) -> Path:
    """The folder holding the three subfolders; every one missing is named at once."""
    if not cfg.weights:
        raise WeightsError("clip.weights: clip.arch=hf needs the path of a diffusers folder")
    root = Path(cfg.weights)
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise WeightsError(f"clip.weights ({root}): missing {', '.join(f'{m}/' for m in missing)}")
    return root


def hf_clip_widths(cfg: ClipConfig) -> tuple[int, int]:
    """(image embedding width, text token width), read from the folders' ``config.json``."""
    root = _root(cfg)
    image = json.loads((root / "image_encoder" / "config.json").read_text())
    text = json.loads((root / "text_encoder" / "config.json").read_text())
    return int(image["projection_dim"]), int(text["hidden_size"])


class TransformersCLIP(nn.Module):
    """``CLIPVisionModelWithProjection`` + ``CLIPTextModel``, frozen and in eval mode.

    Text tokens are the penultimate block's output through the final layer norm: VGen's
    ``layer='penultimate'`` and the diffusers pipeline's default ``clip_skip=1``.
    """

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        root = _root(cfg)
        self.image_encoder = CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder", local_files_only=True)
        self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True)
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        self.requires_grad_(False).eval()
        self.image_size = int(self.image_encoder.config.image_size)
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        processor = root / "feature_extractor" / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "TransformersCLIP":
        """Stays in eval mode: the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] ``(B, 3, H, W)`` -> ``(B, 1, projection_dim)``."""
        x = clip_pixels(pixels, self.image_size, self.mean, self.std).to(self.image_encoder.dtype)
        return self.image_encoder(pixel_values=x).image_embeds[:, None, :]

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> ``(B, max_length, hidden_size)`` token features."""
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)  # transformers < 5 nests it
        return text_model.final_layer_norm(hidden)
