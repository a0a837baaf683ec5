"""Build each model of a stage from a ``Config``, checking that the parts fit together."""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

import torch
from torch import nn

from pipeline.config.loader import ConfigError
from pipeline.config.schema import ClipConfig, Config, VAEConfig
from pipeline.models.clip import FrozenOpenCLIP, clip_embed_dim, clip_text_width
from pipeline.models.denoiser import StageDenoiser
from pipeline.models.hf_clip import TransformersCLIP
from pipeline.models.release_denoiser import ReleaseDenoiser
from pipeline.models.vae import ImageAutoencoder, build_vae

Module = TypeVar("Module", bound=nn.Module)
# A stage's trainable model: an nn.Module with ``stage`` and ``conditioning``
# (``pipeline.models.conditioning``), called as ``model(x_t, t, keep_condition=..., **conditions)``.
Denoiser = nn.Module
ArchitectureFactory = Callable[[Config, str], nn.Module]
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


def _paper(config: Config, stage: str) -> nn.Module:
    return StageDenoiser(config, stage)


def _release(config: Config, stage: str) -> nn.Module:
    """The released base on diffusers' ``I2VGenXLUNet``; its refiner is the paper's."""
    return ReleaseDenoiser(config) if stage == "base" else StageDenoiser(config, stage)


ARCHITECTURES: dict[str, ArchitectureFactory] = {"paper": _paper, "release": _release}


def architecture(name: str) -> ArchitectureFactory:
    """``model.arch``: a built-in name, or ``package.module:factory``, a callable
    ``(config, stage) -> denoiser`` imported by every process that builds the model (Ray
    workers import it by name too), so an architecture of one's own is one file."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    module, sep, attribute = name.partition(":")
    if not sep or not module or not attribute:
        raise ConfigError(f"model.arch: {name!r} is neither one of {sorted(ARCHITECTURES)} nor 'package.module:factory'")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model.arch: cannot import {name!r}: {err}") from err


def build_denoiser(config: Config, stage: str, device: str | torch.device = "cpu") -> Denoiser:
    """The stage's trainable model for ``model.arch``."""
    check_context_width(config)
    factory = architecture(config.model.arch)
    with torch.device(device):
        return factory(config, stage)


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


def build_clip(clip: ClipConfig, device: str | torch.device = "cpu") -> ClipEncoders:
    """open_clip (VGen's layout, or random without weights), or with ``clip.arch: hf`` the
    transformers encoders of a diffusers folder (the released model's other layout)."""
    if clip.arch == "hf":
        return TransformersCLIP(clip).to(device)
    return _frozen(lambda: FrozenOpenCLIP(clip), device)


def build_autoencoder(vae: VAEConfig, device: str | torch.device = "cpu") -> ImageAutoencoder:
    return _frozen(lambda: build_vae(vae, "meta" if str(device) == "meta" else "cpu"), device)
