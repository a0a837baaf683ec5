"""Convolutional pieces of the 3D UNet: SD 2.1's ResNet block and resamplers, and the
ModelScope-T2V temporal convolution that follows each spatial ResNet block.

Names follow diffusers (``norm1``, ``conv1``, ``time_emb_proj``, ``conv_shortcut``,
``downsamplers.0.conv``, ``conv1.0`` ...) so public weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added between the two convs."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """A stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's size, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TemporalConvLayer(nn.Module):
    """Four (GroupNorm, SiLU, [Dropout], Conv3d k=(3,1,1)) layers over the frame axis, residual.

    The last convolution starts at zero, so a new layer is the identity: the 3D UNet then
    equals its 2D spatial part on every frame, which is what lets SD 2.1 weights start it.
    """

    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()

        def layer(with_dropout: bool) -> nn.Sequential:
            parts: list[nn.Module] = [nn.GroupNorm(groups, channels), nn.SiLU()]
            if with_dropout:
                parts.append(nn.Dropout(dropout))
            parts.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*parts)

        self.conv1 = layer(with_dropout=False)
        self.conv2 = layer(with_dropout=True)
        self.conv3 = layer(with_dropout=True)
        self.conv4 = layer(with_dropout=True)
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        batch_frames, channels, height, width = x.shape
        h = x.view(batch_frames // num_frames, num_frames, channels, height, width).transpose(1, 2)
        h = h + self.conv4(self.conv3(self.conv2(self.conv1(h))))
        return h.transpose(1, 2).reshape(batch_frames, channels, height, width)
