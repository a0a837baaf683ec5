"""A third architecture in one file, to prove that adding one needs no edit elsewhere.

``model.arch: tests.toy_architecture:build`` selects it. Its base reads a condition neither
built-in base reads in this way: the caption's tokens and the image embedding side by side
as one context, the image latent concatenated to every frame, and a null condition of zero
tokens. Training, ``i2vgen encode``, the validation loss, the cascade and ``model-info`` run
it through its ``ToyConditioning`` alone. The network is a small 3D convolution stack, just
big enough to learn.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from pipeline.config.schema import Config
from pipeline.frames import image_to_tensor
from pipeline.models.conditioning import ClipEncoder, Conditioning, Conditions, Features, request_fps

WIDTH = 32  # channels of the toy network


class ToyConditioning(Conditioning):
    """Caption tokens and the first frame's embedding as one context; the image latent on
    every frame's input (not on the noise)."""

    image_features = True
    text_features = True

    def conditions(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, null_text: Optional[torch.Tensor] = None
    ) -> Conditions:
        context = torch.cat([features["image_embeds"], features["text"]], dim=1).to(latents.dtype)
        return {"context": context, "fps": fps, "image_latent": latents[:, :, 0]}

    def request_conditions(
        self, clip: ClipEncoder, vae, requests: Sequence, width: int, height: int,
        null_text: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype,
    ) -> Conditions:
        images = torch.stack([image_to_tensor(r.image, width, height) for r in requests]).to(device)
        context = torch.cat([clip.encode_image(images), clip.encode_text([r.prompt or "" for r in requests])], dim=1)
        return {"context": context.to(dtype), "fps": request_fps(requests, device),
                "image_latent": vae.encode(images.to(dtype))}


def timestep_features(t: torch.Tensor, width: int) -> torch.Tensor:
    half = width // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ToyDenoiser(nn.Module):
    """``(x_t, t, context, fps, image_latent) -> v`` with a 3D convolution stack."""

    def __init__(self, config: Config, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.conditioning = ToyConditioning()
        channels = config.unet.in_channels
        self.context_proj = nn.Linear(config.unet.cross_attention_dim, WIDTH)
        self.time_proj = nn.Linear(WIDTH, WIDTH)
        self.conv_in = nn.Conv3d(2 * channels, WIDTH, 3, padding=1)
        self.temp_convs = nn.Conv3d(WIDTH, WIDTH, (3, 1, 1), padding=(1, 0, 0))  # mixes frames
        self.conv_out = nn.Conv3d(WIDTH, channels, 3, padding=1)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, fps: Optional[torch.Tensor] = None,
        image_latent: Optional[torch.Tensor] = None, keep_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        condition = self.context_proj(context.mean(dim=1))
        if keep_condition is not None:  # the null condition: zero tokens
            condition = condition * keep_condition.to(condition.dtype)[:, None]
        frames = sample.shape[2]
        image = image_latent.to(sample.dtype)[:, :, None].expand(-1, -1, frames, -1, -1)
        timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
        bias = condition + self.time_proj(timestep_features(timestep, WIDTH).to(sample.dtype))
        h = torch.nn.functional.silu(self.conv_in(torch.cat([sample, image], dim=1)) + bias[:, :, None, None, None])
        h = h + torch.nn.functional.silu(self.temp_convs(h))
        return self.conv_out(h)


def build(config: Config, stage: str) -> nn.Module:
    """The toy base; the refiner stays the paper's."""
    from pipeline.models.denoiser import StageDenoiser

    return ToyDenoiser(config, stage) if stage == "base" else StageDenoiser(config, stage)
