"""Build each model of a stage from a ``Config``, checking that the parts fit together."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.models.clip import FrozenOpenCLIP, clip_embed_dim, clip_text_width
from pipeline.models.denoiser import StageDenoiser
from pipeline.models.hf_clip import TransformersCLIP
from pipeline.models.release_denoiser import ReleaseDenoiser
from pipeline.models.vae import ImageAutoencoder, build_vae

Module = TypeVar("Module", bound=nn.Module)
# Both take (x_t, t, context, fps, image_latent, keep_condition=..., **extra conditions).
Denoiser = StageDenoiser | ReleaseDenoiser
# Both give encode_image(pixels) -> (B, 1, D) and encode_text(prompts) -> (B, 77, D).
ClipEncoders = FrozenOpenCLIP | TransformersCLIP

# Seed of the random initialisation of frozen encoders that run without weights.
FROZEN_INIT_SEED = 0


def check_context_width(config: Config) -> None:
    """The UNet's cross-attention width must match what CLIP feeds it in both stages."""
    width = config.unet.cross_attention_dim
    image, text = clip_embed_dim(config.clip), clip_text_width(config.clip)
    if width != image or width != text:
        raise ConfigError(
            f"unet.cross_attention_dim: {width}, but clip.arch={config.clip.arch!r} gives "
            f"image embeddings of {image} and text tokens of {text}"
        )


def build_denoiser(config: Config, stage: str, device: str | torch.device = "cpu") -> Denoiser:
    """The stage's trainable model: the paper's, or for ``model.arch: release`` the base
    built on diffusers' ``I2VGenXLUNet`` (the refiner is always the paper's)."""
    check_context_width(config)
    with torch.device(device):
        if config.model.arch == "release" and stage == "base":
            return ReleaseDenoiser(config)
        return StageDenoiser(config, stage)


def _frozen(factory: Callable[[], Module], device: str | torch.device) -> Module:
    """A frozen encoder, initialised on the CPU from a fixed seed and then moved.

    Without weights, CLIP and the SD VAE are random; the seed makes them the same random
    model in every process: each training rank, the exporter and every inference replica
    condition on identical features, as they would with real weights.
    """
    build_on = "meta" if str(device) == "meta" else "cpu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FROZEN_INIT_SEED)
        with torch.device(build_on):
            model = factory()
    return model if build_on == "meta" else model.to(device)


def build_clip(config: Config, device: str | torch.device = "cpu") -> ClipEncoders:
    """open_clip (VGen's layout, or random without weights), or with ``clip.arch: hf`` the
    transformers encoders of a diffusers folder (the released model's other layout)."""
    if config.clip.arch == "hf":
        return TransformersCLIP(config.clip).to(device)
    return _frozen(lambda: FrozenOpenCLIP(config.clip), device)


def build_autoencoder(config: Config, device: str | torch.device = "cpu") -> ImageAutoencoder:
    return _frozen(lambda: build_vae(config.vae, "meta" if str(device) == "meta" else "cpu"), device)
