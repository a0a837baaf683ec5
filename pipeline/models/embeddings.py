"""Sinusoidal embeddings of the diffusion timestep and of the clip's frame rate."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos | sin]`` of ``values`` at ``dim / 2`` geometric frequencies (SD's convention).

    Raw integer timesteps and FPS values go in unscaled, as in SD 2.1 and VGen.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    angles = values.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear-SiLU-Linear over the sinusoid (diffusers' names: ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def fps_embedding(in_dim: int, out_dim: int) -> nn.Sequential:
    """The FPS MLP (I2VGen-XL's ``fps_embedding.0`` / ``.2``), its last layer zeroed.

    Zero at init means the embedding adds nothing until training gives it a use, so a UNet
    started from SD 2.1 or ModelScope weights behaves exactly as the source model did.
    """
    mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp
