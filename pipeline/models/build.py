"""Build each model of a stage from a ``Config``, checking that the parts fit together."""

from __future__ import annotations

import torch

from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.models.clip import FrozenOpenCLIP, clip_embed_dim, clip_text_width
from pipeline.models.denoiser import StageDenoiser
from pipeline.models.vae import ImageAutoencoder, build_vae


def check_context_width(config: Config) -> None:
    """The UNet's cross-attention width must match what CLIP feeds it in both stages."""
    width = config.unet.cross_attention_dim
    image, text = clip_embed_dim(config.clip.arch), clip_text_width(config.clip.arch)
    if width != image or width != text:
        raise ConfigError(
            f"unet.cross_attention_dim: {width}, but clip.arch={config.clip.arch!r} gives "
            f"image embeddings of {image} and text tokens of {text}"
        )


def build_denoiser(config: Config, stage: str, device: str | torch.device = "cpu") -> StageDenoiser:
    check_context_width(config)
    with torch.device(device):
        return StageDenoiser(config, stage)


def build_clip(config: Config, device: str | torch.device = "cpu") -> FrozenOpenCLIP:
    with torch.device(device):
        return FrozenOpenCLIP(config.clip)


def build_autoencoder(config: Config, device: str | torch.device = "cpu") -> ImageAutoencoder:
    return build_vae(config.vae, device)
