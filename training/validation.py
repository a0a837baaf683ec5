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

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config.schema import Config
from pipeline.diffusion.noising import add_image_to_first_frame, sample_noise
from pipeline.diffusion.schedule import NoiseSchedule
from pipeline.tables import VAL_ROWS
from training.losses import DiffusionBatch

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
    model: torch.nn.Module, schedule: NoiseSchedule, batch: DiffusionBatch, config: Config, seed: int = 0,
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
    if denoiser.adds_image_to_noise:
        noise = add_image_to_first_frame(noise, batch.image_latent)
    keep = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    extra = {} if batch.image_embedding is None else {
        "image_embedding": batch.image_embedding, "null_context": batch.null_context
    }
    losses, zero_losses = [], []
    for step in fixed_timesteps(stage.max_timestep, count):
        t = torch.full((x0.shape[0],), step, device=x0.device, dtype=torch.long)
        target = schedule.target(x0, noise, t).float()
        prediction = model(schedule.add_noise(x0, noise, t), t, batch.context, batch.fps, batch.image_latent,
                           keep_condition=keep, **extra)
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
    from training.loop import diffusion_batch, encode_media

    device = next(model.parameters()).device
    pixels = from_frames([c.frames for c in clips]).to(device)
    encoded = encode_media(model, encoders, vae, pixels, [c.caption or "" for c in clips])
    return diffusion_batch(model, encoded, torch.full((len(clips),), fps, device=device), dtype, null_text)


def default_val_where(config: Config) -> str:
    """The validation rows: ``train.val_where``, or curation's deterministic split."""
    return config.train.val_where or VAL_ROWS


class Validator:
    """What a training run measures every ``train.validate_every`` steps on held-out rows.

    Every rank reads the same few validation clips itself (media never pass through the
    driver) and runs the same forwards, since a ZeRO-3 forward is a collective; rank 0
    writes. Sample videos come from the clips' first frames (base) or from the real clips
    re-noised to T_r (refiner), with fixed seeds, so successive samples differ only by the
    weights.
    """

    def __init__(self, config: Config, stage: str, data_dir: str, encoders, vae, null_text, device, dtype) -> None:
        from pipeline.heldout import heldout_clips

        stage_cfg = getattr(config.stages, stage)
        self.config, self.stage, self.device, self.dtype = config, stage, device, dtype
        self.encoders, self.vae, self.null_text = encoders, vae, null_text
        self.schedule = NoiseSchedule(config.diffusion)
        self.clips = heldout_clips(
            data_dir, default_val_where(config), config.train.validation_clips, stage_cfg.frames,
            config.sampling.fps, (stage_cfg.width, stage_cfg.height),
            stage_crop_key="crop_base" if stage == "base" else "crop_refiner", option="train.val_where",
        )
        self._cascade = None

    @torch.no_grad()
    def losses(self, engine: torch.nn.Module) -> ValidationLosses:
        """The validation and zero-prediction losses of the engine's current weights."""
        module = getattr(engine, "module", engine)
        module.eval()
        try:
            batch = clips_batch(module, self.encoders, self.vae, self.clips, self.config.sampling.fps, self.dtype,
                                self.null_text)
            return validation_losses(engine, self.schedule, batch, self.config, seed=self.config.train.seed)
        finally:
            module.train()

    @torch.no_grad()
    def samples(self, engine: torch.nn.Module) -> list[tuple[str, np.ndarray]]:
        """``(clip_id, uint8 (F, H, W, 3) video)`` per validation clip, sampled with the
        current weights at ``train.validation_sampling_steps``."""
        from pipeline.generation.cascade import Cascade
        from pipeline.generation.request import make_request

        module = getattr(engine, "module", engine)
        if self._cascade is None:  # built once: it holds the live module, not a copy
            stages = {"base": module, "refiner": None} if self.stage == "base" else {"base": None, "refiner": module}
            same_dtype = next(self.vae.parameters(), torch.empty(0, dtype=self.dtype)).dtype == self.dtype
            self._cascade = Cascade(self.config, **stages, device=self.device, dtype=self.dtype, clip=self.encoders,
                                    vae=self.vae if same_dtype else None)
        cascade = self._cascade
        module.eval()
        requests = [
            make_request(self.config, c.image, prompt=c.caption, frames=len(c.frames), fps=self.config.sampling.fps,
                         steps=self.config.train.validation_sampling_steps, seed=k)
            for k, c in enumerate(self.clips)
        ]
        try:
            videos = (cascade.run_base(requests) if self.stage == "base"
                      else cascade.run_refiner([c.frames for c in self.clips], requests))
        finally:
            module.train()
        return [(c.clip_id, v) for c, v in zip(self.clips, videos)]
