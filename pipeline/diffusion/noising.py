"""The forward process as training and the cascade use it: noise, timesteps, re-noising.

The paper's two training-time additions live here: offset noise (strength 0.1) and the
detail encoder, which adds the input image's latent to the first frame's noise so the
sampler starts from a latent that already holds the image.
"""

from __future__ import annotations

from typing import Optional

import torch

from pipeline.diffusion.noise_schedule import NoiseSchedule


def sample_noise(
    shape: tuple[int, ...],
    offset: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise for a ``(B, C, F, H, W)`` latent, plus ``offset`` times one extra
    Gaussian per (sample, channel, frame): the offset noise that lets the model change a
    frame's mean brightness (VGen's ``noise_strength``)."""
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if offset:
        per_frame = torch.randn(shape[:3] + (1, 1), generator=generator, device=device, dtype=dtype)
        noise = noise + offset * per_frame
    return noise


def add_image_to_first_frame(noise: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
    """The detail encoder: ``noise`` ``(B, C, F, H, W)`` with the image latent ``(B, C, H, W)``
    added to frame 0. Used identically in training (the noise that forms x_t and the target)
    and in sampling (the starting latent), so both see the same distribution."""
    out = noise.clone()
    out[:, :, 0] = out[:, :, 0] + image_latent.to(noise.dtype)
    return out


def sample_timesteps(
    batch: int, max_timestep: int, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Uniform integer steps in ``[0, max_timestep)``: 1000 for the base, 600 for the refiner."""
    return torch.randint(0, max_timestep, (batch,), generator=generator, device=device)


def condition_keep_mask(
    batch: int, dropout: float, generator: Optional[torch.Generator] = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``(B,)`` bools, False with probability ``dropout``: rows trained unconditionally so the
    model can do classifier-free guidance."""
    return torch.rand(batch, generator=generator, device=device) >= dropout


def renoise(
    noise_schedule: NoiseSchedule, x0: torch.Tensor, t: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """SDEdit: a finished latent video taken back to step ``t`` of the forward process,
    where the refiner starts (the paper's T_r). The noise is drawn on the generator's
    device, so a CPU generator gives the same noise whichever device ``x0`` is on."""
    where = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device, x0.dtype)
    return noise_schedule.add_noise(x0, noise, t)
