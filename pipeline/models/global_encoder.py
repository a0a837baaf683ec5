"""The trainable global encoder of the paper's Table 1.

It reads the input image's VAE latent and gives one vector of the cross-attention width,
which is added to the frozen CLIP image embedding: CLIP supplies high-level semantics,
this encoder the content and layout that CLIP's language-aligned features lose.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.schema import GlobalEncoderConfig


def _conv_silu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2), nn.SiLU()]


class GlobalEncoder(nn.Module):
    """Stem (k5, k3) -> adaptive average pool -> stride-2 stages -> a k2 s2 conv to 1x1.

    With the paper's sizes: 4 -> 64 channels, pool to 32x32, stages to 16/8/4/2 pixels with
    256/512/512/1024 channels, and a final 1024 -> ``out_dim`` conv. Table 1 lists padding 1
    on that final conv but a 1x1 output; a 2x2 input gives 1x1 only without padding, so the
    output shape decides: no padding.
    """

    def __init__(self, in_channels: int, out_dim: int, cfg: GlobalEncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_silu(in_channels, cfg.stem_channels, 5)
        layers += _conv_silu(cfg.stem_channels, cfg.stem_channels, 3)
        layers.append(nn.AdaptiveAvgPool2d(cfg.pool_size))
        prev = cfg.stem_channels
        for i, ch in enumerate(cfg.stage_channels):
            last = i == len(cfg.stage_channels) - 1
            layers += _conv_silu(prev, prev if last else ch, 3, stride=2)
            layers += _conv_silu(prev if last else ch, ch, 3)
            prev = ch
        layers.append(nn.Conv2d(prev, out_dim, 2, stride=2))
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` image latent -> ``(B, 1, out_dim)``: one context token."""
        return self.layers(latent).flatten(2).transpose(1, 2)
