"""The training objective of both stages: v-prediction MSE on the paper's forward process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.config.schema import Config
from pipeline.diffusion.noising import add_image_to_first_frame, condition_keep_mask, sample_noise, sample_timesteps
from pipeline.diffusion.schedule import NoiseSchedule
from pipeline.models.build import Denoiser


@dataclass
class DiffusionBatch:
    """One same-shape micro-batch, already encoded by the frozen VAE and CLIP.

    ``image_latent`` is the first frame's latent (the input image) for the base stage.
    """

    latents: torch.Tensor  # (B, C, F, h, w)
    context: torch.Tensor  # (B, L, D): CLIP image embedding (base) or text tokens (refiner)
    fps: torch.Tensor  # (B,)
    image_latent: Optional[torch.Tensor] = None  # (B, C, h, w), base only
    # The released architecture's extra conditions: the first frame's CLIP embedding and
    # the empty prompt's tokens (what a dropped text condition becomes).
    image_embedding: Optional[torch.Tensor] = None  # (B, 1, D)
    null_context: Optional[torch.Tensor] = None  # (B, L, D)


def diffusion_loss(
    model: Denoiser,
    schedule: NoiseSchedule,
    batch: DiffusionBatch,
    config: Config,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample t in the stage's range, noise with offset noise (plus the image on frame 0 for
    the paper's base), drop conditions for guidance, and regress the schedule's target.

    ``model`` is a denoiser (the paper's or the released architecture) or a DeepSpeed
    engine wrapping one. Returns the loss
    and the timesteps drawn (so callers can log them)."""
    denoiser = getattr(model, "module", model)
    stage = getattr(config.stages, denoiser.stage)
    x0 = batch.latents
    b, device = x0.shape[0], x0.device
    noise = sample_noise(tuple(x0.shape), config.diffusion.offset_noise, generator, device, x0.dtype)
    if denoiser.adds_image_to_noise:
        noise = add_image_to_first_frame(noise, batch.image_latent)
    t = sample_timesteps(b, stage.max_timestep, generator, device)
    keep = condition_keep_mask(b, stage.condition_dropout, generator, device)
    x_t = schedule.add_noise(x0, noise, t)
    extra = {} if batch.image_embedding is None else {
        "image_embedding": batch.image_embedding, "null_context": batch.null_context
    }
    prediction = model(x_t, t, batch.context, batch.fps, batch.image_latent, keep_condition=keep, **extra)
    return F.mse_loss(prediction.float(), schedule.target(x0, noise, t).float()), t
