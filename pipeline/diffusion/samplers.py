"""DDIM and DPM-Solver++ (2M) over a ``NoiseSchedule``, and DDIM inversion.

A sampler takes ``denoise(x_t, t) -> prediction`` (in the schedule's parameterisation, with
guidance already applied), a starting latent and a descending list of steps. Starting at
``timesteps[0] < T - 1`` is how the refiner continues from a re-noised base video.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from pipeline.diffusion.noise_schedule import NoiseSchedule

Denoise = Callable[[torch.Tensor, int], torch.Tensor]


def sampling_timesteps(num_steps: int, start: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """``num_steps`` descending steps over ``[0, start)``.

    ``trailing`` (Lin et al. 2023) puts the first at ``start - 1``: the sampler begins
    exactly where the noise was put, which matters for zero-terminal-SNR schedules and for
    the refiner (``start = T_r``). ``leading`` is DDIM's original ``k * (start // steps)``
    plus ``offset`` (diffusers' ``steps_offset``), which the released model samples with:
    981, 961, ..., 1 for 50 of 1000 steps with offset 1.
    """
    if not 1 <= num_steps <= start:
        raise ValueError(f"steps: need 1 <= steps <= {start}, got {num_steps}")
    if spacing == "leading":
        ratio = start // num_steps
        return [min(i * ratio + offset, start - 1) for i in reversed(range(num_steps))]
    ratio = start / num_steps
    return [int(round(start - i * ratio)) - 1 for i in range(num_steps)]


def ddim_sample(
    noise_schedule: NoiseSchedule,
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al., 2021) from ``timesteps[0]`` to the clean sample (step -1)."""
    steps = list(timesteps) + [-1]
    for t, t_prev in tqdm(list(zip(steps[:-1], steps[1:])), desc="ddim", disable=not progress):
        x0, eps = noise_schedule.to_x0_eps(denoise(x, t), x, t)
        alpha_prev, sigma_prev = noise_schedule.alpha_sigma(t_prev, x)
        if eta > 0 and t_prev >= 0:
            alpha, sigma = noise_schedule.alpha_sigma(t, x)
            ratio = (sigma_prev / sigma) * (1 - (alpha / alpha_prev) ** 2).clamp(min=0).sqrt()
            extra = eta * ratio
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = alpha_prev * x0 + (sigma_prev**2 - extra**2).clamp(min=0).sqrt() * eps + extra * noise
        else:
            x = alpha_prev * x0 + sigma_prev * eps
    return x


def dpm_solver_pp_sample(
    noise_schedule: NoiseSchedule,
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    progress: bool = False,
) -> torch.Tensor:
    """Multistep DPM-Solver++(2M) in data-prediction form (Lu et al., 2022).

    The first step is first order (no history yet) and the last goes to sigma = 0, where the
    update is exactly the last data prediction. In between, the second-order update uses the
    previous data prediction, so each step costs one model evaluation.
    """
    steps = list(timesteps)
    prev_x0: Optional[torch.Tensor] = None
    prev_lambda: Optional[torch.Tensor] = None
    for i, t in enumerate(tqdm(steps, desc="dpm++", disable=not progress)):
        x0, _ = noise_schedule.to_x0_eps(denoise(x, t), x, t)
        if i == len(steps) - 1:
            return x0
        alpha_s, sigma_s = _clamped_alpha_sigma(noise_schedule, t, x)
        alpha_t, sigma_t = _clamped_alpha_sigma(noise_schedule, steps[i + 1], x)
        lambda_s, lambda_t = torch.log(alpha_s / sigma_s), torch.log(alpha_t / sigma_t)
        h = lambda_t - lambda_s
        phi = torch.expm1(-h)  # e^{-h} - 1
        data = x0
        if prev_x0 is not None:
            r = (lambda_s - prev_lambda) / h
            data = x0 + (x0 - prev_x0) / (2 * r)
        x = (sigma_t / sigma_s) * x - alpha_t * phi * data
        prev_x0, prev_lambda = x0, lambda_s
    return x


def _clamped_alpha_sigma(noise_schedule: NoiseSchedule, t: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma with alpha kept off zero, so log-SNR stays finite on zero-terminal-SNR
    schedules (diffusers does the same with alphas_cumprod[-1] = 2**-24)."""
    alpha, sigma = noise_schedule.alpha_sigma(t, like)
    return alpha.clamp(min=2**-12), sigma


def ddim_invert(
    noise_schedule: NoiseSchedule,
    denoise: Denoise,
    x0: torch.Tensor,
    timesteps: Sequence[int],
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM run backwards: the clean latent up to ``max(timesteps)``.

    The cascade's alternative to re-noising: the refiner then starts from a latent that
    maps back to the base video instead of from a random one (MS-Vid2Vid-XL did this).
    ``timesteps`` is the descending list the sampler will use afterwards.
    """
    up = [-1] + sorted(timesteps)
    x = x0
    for t_low, t_high in tqdm(list(zip(up[:-1], up[1:])), desc="ddim-inversion", disable=not progress):
        query = max(t_low, 0)
        x0_hat, eps = noise_schedule.to_x0_eps(denoise(x, query), x, t_low)
        alpha, sigma = noise_schedule.alpha_sigma(t_high, x)
        x = alpha * x0_hat + sigma * eps
    return x


SAMPLERS = {"ddim": ddim_sample, "dpm++": dpm_solver_pp_sample}
