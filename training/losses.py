"""The training objective of both stages: v-prediction MSE on the paper's forward process."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.config.schema import Config
from pipeline.diffusion.noising import condition_keep_mask, sample_noise, sample_timesteps
from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.models.build import Denoiser
from pipeline.models.conditioning import DiffusionBatch


def diffusion_loss(
    model: Denoiser,
    noise_schedule: NoiseSchedule,
    batch: DiffusionBatch,
    config: Config,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample t in the stage's range, noise with offset noise (plus what the conditioning
    adds to it: the image on frame 0 for the paper's base), drop conditions for guidance,
    and regress the schedule's target.

    ``model`` is a denoiser (the paper's or the released architecture) or a DeepSpeed
    engine wrapping one. Returns the loss
    and the timesteps drawn (so callers can log them)."""
    denoiser = getattr(model, "module", model)
    stage = getattr(config.stages, denoiser.stage)
    x0 = batch.latents
    b, device = x0.shape[0], x0.device
    noise = sample_noise(tuple(x0.shape), config.diffusion.offset_noise, generator, device, x0.dtype)
    noise = denoiser.conditioning.start_noise(noise, batch.conditions)
    t = sample_timesteps(b, stage.max_timestep, generator, device)
    keep = condition_keep_mask(b, stage.condition_dropout, generator, device)
    x_t = noise_schedule.add_noise(x0, noise, t)
    prediction = model(x_t, t, keep_condition=keep, **batch.conditions)
    return F.mse_loss(prediction.float(), noise_schedule.target(x0, noise, t).float()), t
