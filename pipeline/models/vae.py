"""Image autoencoders behind one interface: SD 2.1's ``AutoencoderKL`` and a lossless stand-in.

Both map pixels in [-1, 1], ``(N, 3, H, W)``, to scaled latents ``(N, C, H/f, W/f)`` and back.
The video helpers fold frames into the batch, since both autoencoders are 2D (as in VGen).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.schema import VAEConfig
from pipeline.models.public_checkpoints import read_sd_vae_state
from pipeline.models.weights import load_into

# SD 2.1's VAE: 128-256-512-512 channels, 4 latent channels, latents scaled by 0.18215.
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)


class ImageAutoencoder(nn.Module, ABC):
    """What the rest of the system needs of a VAE."""

    latent_channels: int
    factor: int

    @abstractmethod
    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""

    def encode_video(self, video: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """``(B, 3, F, H, W)`` pixels -> ``(B, C, F, h, w)`` latents, ``chunk`` frames at a time."""
        return self._per_frame(video, self.encode, chunk)

    def decode_video(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """``(B, C, F, h, w)`` latents -> ``(B, 3, F, H, W)`` pixels, ``chunk`` frames at a time."""
        return self._per_frame(latents, self.decode, chunk)

    @staticmethod
    def _per_frame(video: torch.Tensor, fn, chunk: int) -> torch.Tensor:
        batch, _, frames = video.shape[:3]
        flat = video.transpose(1, 2).flatten(0, 1)
        out = torch.cat([fn(flat[i : i + chunk]) for i in range(0, flat.shape[0], chunk)])
        return out.view(batch, frames, *out.shape[1:]).transpose(1, 2)


class PixelUnshuffleAutoencoder(ImageAutoencoder):
    """Weight-free and exactly invertible: ``factor x factor`` pixel blocks become channels.

    The demo and tests use it in place of SD's VAE: it needs no weights, costs nothing, and
    a decoded latent is the original image up to float rounding, so errors seen downstream
    are the diffusion model's own. Like SD's latents, the channels are shifted and scaled
    (``(pixels - shift) * scale``) to about unit variance: unscaled pixels in [-1, 1] have a
    std of about 0.35, which would make every timestep's signal-to-noise ratio about a
    tenth of the schedule's and leave the refiner's T_r = 600 input almost pure noise.
    """

    def __init__(self, factor: int, scaling_factor: float = 1.0, shift_factor: float = 0.0) -> None:
        super().__init__()
        self.factor = factor
        self.latent_channels = 3 * factor * factor
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return (F.pixel_unshuffle(pixels, self.factor) - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents / self.scaling_factor + self.shift_factor, self.factor)


class SDAutoencoder(ImageAutoencoder):
    """SD 2.1's ``AutoencoderKL`` from diffusers; latents are scaled by its ``scaling_factor``.

    ``encode`` samples the posterior (as VGen does for the image condition) when given a
    generator, and takes its mean otherwise, so encodes are reproducible by default.
    """

    latent_channels = 4

    def __init__(self, cfg: VAEConfig, device: str | torch.device = "cpu") -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        weights = None if cfg.weights is None else Path(cfg.weights)
        if weights is not None and not weights.exists():
            raise FileNotFoundError(f"vae.weights: {weights} does not exist")
        if weights is not None and (weights / "config.json").is_file():  # a diffusers vae/ folder
            self.model = AutoencoderKL.from_pretrained(weights, local_files_only=True)
        else:
            levels = len(cfg.block_out_channels)
            shape = dict(
                block_out_channels=list(cfg.block_out_channels), norm_num_groups=cfg.norm_num_groups,
                down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
            )
            with torch.device(device):
                self.model = AutoencoderKL(**{**SD_VAE_CONFIG, **shape})
            if weights is not None:  # an SD single file (VGen's VAE source), a bare VAE file, a pipeline root
                load_into(self.model, read_sd_vae_state(weights), source=f"vae.weights ({weights})")
        self.scaling_factor = float(cfg.scaling_factor or self.model.config.scaling_factor)
        self.shift_factor = cfg.shift_factor
        self.factor = 2 ** (len(self.model.config.block_out_channels) - 1)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        posterior = self.model.encode(pixels).latent_dist
        latents = posterior.sample(generator) if generator is not None else posterior.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents / self.scaling_factor + self.shift_factor).sample


def build_vae(cfg: VAEConfig, device: str | torch.device = "cpu") -> ImageAutoencoder:
    if cfg.kind == "pixel_unshuffle":
        return PixelUnshuffleAutoencoder(cfg.factor, cfg.scaling_factor or 1.0, cfg.shift_factor)
    return SDAutoencoder(cfg, device)
