"""What a training run measures on held-out rows while it trains (``Validator``): the
validation loss of ``pipeline.validation_loss`` and sample videos from the clips' first
frames."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config.schema import Config, TrainConfig
from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.tables import VAL_ROWS
from pipeline.validation_loss import ValidationLosses, clips_batch, validation_losses


def default_val_where(train: TrainConfig) -> str:
    """The validation rows: ``train.val_where``, or curation's deterministic split."""
    return train.val_where or VAL_ROWS


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
        self.noise_schedule = NoiseSchedule(config.diffusion)
        self.clips = heldout_clips(
            data_dir, default_val_where(config.train), config.train.validation_clips, stage_cfg.frames,
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
            return validation_losses(engine, self.noise_schedule, batch, self.config, seed=self.config.train.seed)
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
