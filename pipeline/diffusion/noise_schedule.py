"""The noise schedule and the conversions between what a denoiser may predict.

A latent at step ``t`` is ``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t^2 =
alphas_cumprod[t]`` and ``sigma_t^2 = 1 - alpha_t^2``. Step ``-1`` means the clean sample
(``alpha = 1``), which is where DDIM's last step lands. The paper uses SD's linear schedule
and v-prediction (``v = alpha * eps - sigma * x_0``); the released model a cosine schedule
rescaled to zero terminal SNR: both are config choices here.
"""

from __future__ import annotations

import math

import torch

from pipeline.config.schema import DiffusionConfig


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """Per-step betas in float64, for the configured schedule."""
    n = cfg.num_train_timesteps
    if cfg.schedule == "linear_sd":
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float64) ** 2
    elif cfg.schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    else:  # cosine (Nichol & Dhariwal), betas capped at 0.999 as in VGen and diffusers
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
            dtype=torch.float64,
        )
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last step is pure noise (Lin et al., 2023)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


class NoiseSchedule:
    """alpha_t, sigma_t for integer steps, noising, and prediction-type conversions."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.num_train_timesteps = cfg.num_train_timesteps
        self.prediction = cfg.prediction
        self.alphas_cumprod = torch.cumprod(1 - make_betas(cfg), 0)

    def alpha_sigma(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t and sigma_t for step(s) ``t``, shaped to broadcast against ``like``.

        ``t`` is a scalar or one step per batch row; ``-1`` gives the clean sample.
        """
        t = torch.as_tensor(t, dtype=torch.long, device=like.device).reshape(-1)
        # The table lives on the CPU; index it where the steps are (the trainer draws them on the GPU).
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod]).to(like.device)
        ab = padded[t + 1]
        shape = (-1,) + (1,) * (like.ndim - 1)
        alpha = ab.sqrt().to(like.dtype).view(shape)
        sigma = (1 - ab).clamp(min=0).sqrt().to(like.dtype).view(shape)
        return alpha, sigma

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the denoiser is trained to predict at step ``t``."""
        alpha, sigma = self.alpha_sigma(t, x0)
        if self.prediction == "v":
            return alpha * noise - sigma * x0
        if self.prediction == "epsilon":
            return noise
        return x0

    def to_x0_eps(
        self, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean sample and the noise implied by a prediction of this schedule's kind."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        if self.prediction == "v":
            return alpha * x_t - sigma * prediction, sigma * x_t + alpha * prediction
        if self.prediction == "epsilon":
            return (x_t - sigma * prediction) / alpha, prediction
        return prediction, (x_t - alpha * prediction) / sigma
