"""The validation loss: one number per model that is comparable across steps and runs.

The training loss is noisy by design (random timesteps, noise, dropout and rows each step),
so it cannot say whether a model is still improving. Here every call sees the same batch,
the same noise and the same fixed timesteps spread over the stage's range, with the
condition always kept, so two calls differ only by the weights. Beside it stands the loss
of a model that predicts zeros on the same batch: a model no better than that has learned
nothing (for v-prediction it is the mean square of the target, not 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config.schema import Config
from pipeline.diffusion.noising import sample_noise
from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.models.conditioning import DiffusionBatch

# Timesteps per validation batch: evenly spaced midpoints of the stage's range.
VALIDATION_TIMESTEPS = 8


@dataclass(frozen=True)
class ValidationLosses:
    validation_loss: float
    zero_prediction_loss: float

    @property
    def ratio(self) -> float:
        """Validation over zero-prediction loss: 1.0 learned nothing, lower is better."""
        return self.validation_loss / max(self.zero_prediction_loss, 1e-12)


def fixed_timesteps(max_timestep: int, count: int = VALIDATION_TIMESTEPS) -> list[int]:
    """``count`` timesteps at the midpoints of equal slices of ``[0, max_timestep)``."""
    return [int((k + 0.5) * max_timestep / count) for k in range(count)]


@torch.no_grad()
def validation_losses(
    model: torch.nn.Module, noise_schedule: NoiseSchedule, batch: DiffusionBatch, config: Config, seed: int = 0,
    count: int = VALIDATION_TIMESTEPS,
) -> ValidationLosses:
    """Mean v-loss (or the configured target's) of ``model`` over the fixed timesteps, and of
    a zero prediction, on ``batch`` with noise drawn from ``seed``. ``model`` is a denoiser
    or a DeepSpeed engine around one; the caller puts it in eval mode (temporal dropout)."""
    denoiser = getattr(model, "module", model)
    stage = getattr(config.stages, denoiser.stage)
    x0 = batch.latents
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = sample_noise(tuple(x0.shape), config.diffusion.offset_noise, generator).to(x0.device, x0.dtype)
    noise = denoiser.conditioning.start_noise(noise, batch.conditions)
    keep = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    losses, zero_losses = [], []
    for step in fixed_timesteps(stage.max_timestep, count):
        t = torch.full((x0.shape[0],), step, device=x0.device, dtype=torch.long)
        target = noise_schedule.target(x0, noise, t).float()
        prediction = model(noise_schedule.add_noise(x0, noise, t), t, keep_condition=keep, **batch.conditions)
        losses.append(F.mse_loss(prediction.float(), target).item())
        zero_losses.append(target.square().mean().item())
    return ValidationLosses(sum(losses) / len(losses), sum(zero_losses) / len(zero_losses))


@torch.no_grad()
def clips_batch(model: torch.nn.Module, encoders, vae, clips: list, fps: int, dtype: torch.dtype,
                null_text: torch.Tensor | None = None) -> DiffusionBatch:
    """Held-out clips (``pipeline.heldout.HeldoutClip``) encoded for ``model``'s stage as the
    trainer encodes a micro-batch: what the validation loss of training and of
    ``i2vgen eval`` is taken on."""
    from pipeline.generation.cascade import from_frames

    device = next(model.parameters()).device
    pixels = from_frames([c.frames for c in clips]).to(device)
    latents, features = model.conditioning.encode(encoders, vae, pixels, [c.caption or "" for c in clips])
    return model.conditioning.batch(latents, features, torch.full((len(clips),), fps, device=device), dtype, null_text)


