"""The trainable part of each stage: the 3D UNet and, for the base, the global encoder.

Frozen encoders (CLIP, VAE) stay outside: callers pass their outputs in, so the training
engine holds only what it updates and the encoders can run once in a pre-pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from pipeline.config.schema import Config
from pipeline.models.conditioning import PaperImageConditioning, PaperTextConditioning
from pipeline.models.global_encoder import GlobalEncoder
from pipeline.models.unet3d import UNet3D


class StageDenoiser(nn.Module):
    """``(noisy latents, t, condition, fps) -> prediction`` for the base or the refiner.

    Base: ``context`` is the CLIP image embedding ``(B, 1, D)``; the global encoder's vector
    over ``image_latent`` is added to it (paper, Sec. 3.2); with ``model.image_concat`` the
    image latent is also concatenated to every frame's channels. Refiner: ``context`` is the CLIP
    text tokens and there is no global encoder.

    ``keep_condition`` (``(B,)`` bools) replaces the context of the other rows by zeros: the
    null condition, used both for condition dropout in training and for the unconditional
    branch of classifier-free guidance, so the two always agree.
    """

    def __init__(self, config: Config, stage: str) -> None:
        super().__init__()
        if stage not in ("base", "refiner"):
            raise ValueError(f"stage must be 'base' or 'refiner', got {stage!r}")
        self.stage = stage
        self.conditioning = PaperImageConditioning() if stage == "base" else PaperTextConditioning()
        self.concats_image = stage == "base" and config.model.image_concat
        # With image_concat the UNet reads [x_t, image latent] per frame: twice the channels in.
        unet_in = config.unet.in_channels * (2 if self.concats_image else 1)
        self.unet = UNet3D(replace(config.unet, in_channels=unet_in))
        self.global_encoder = (
            GlobalEncoder(config.unet.in_channels, config.unet.cross_attention_dim, config.global_encoder)
            if stage == "base"
            else None
        )

    def condition(
        self,
        context: torch.Tensor,
        image_latent: Optional[torch.Tensor] = None,
        keep_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The cross-attention context this stage's UNet sees."""
        if self.global_encoder is not None:
            if image_latent is None:
                raise ValueError("the base stage needs image_latent for its global encoder")
            context = context + self.global_encoder(image_latent.to(context.dtype))
        if keep_condition is not None:
            context = context * keep_condition.to(context.dtype).view(-1, 1, 1)
        return context

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        fps: Optional[torch.Tensor] = None,
        image_latent: Optional[torch.Tensor] = None,
        keep_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self.stage == "base" and image_latent is None:
            raise ValueError("the base stage needs image_latent for its global encoder")
        if self.concats_image:
            # Not dropped with the context: like the noise's frame 0, it is the task's input.
            frames = sample.shape[2]
            sample = torch.cat([sample, image_latent.to(sample.dtype).unsqueeze(2).expand(-1, -1, frames, -1, -1)], 1)
        return self.unet(sample, timestep, self.condition(context, image_latent, keep_condition), fps)
