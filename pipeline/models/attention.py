"""Attention layers of the 3D UNet: SD 2.1's spatial transformer and the temporal transformer.

Parameter names follow diffusers (``to_q``, ``to_out.0``, ``ff.net.0.proj``, ``proj_in`` ...)
so that SD 2.1 and ModelScope-T2V state dicts load into these modules without renaming.
All attention goes through ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; cross-attention when ``context_dim`` is given."""

    def __init__(
        self, query_dim: int, heads: int, head_dim: int, context_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._split_heads(proj(src)) for proj, src in
                   ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, length, head_dim = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.heads * head_dim)
        return self.to_out[1](self.to_out[0](out))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, inner = x.shape
        return x.view(batch, length, self.heads, inner // self.heads).transpose(1, 2)


class GEGLU(nn.Module):
    """A gated GELU projection: one linear layer gives the value and its gate."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width, as in SD 2.1."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, a second attention, and a feed-forward, each residual.

    The second attention attends to ``context`` when ``context_dim`` is set (spatial layers)
    and is a second self-attention otherwise (temporal layers, ModelScope's
    ``double_self_attention``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: Optional[int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.is_cross = context_dim is not None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context if self.is_cross else None)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """SD 2.1's ``Transformer2DModel`` with linear projections: attention within each frame.

    Input and output are ``(batch * frames, channels, height, width)``; ``context`` has one
    row per frame.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, groups: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, head_dim, context_dim)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch_frames, channels, height, width = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = self.proj_out(h)
        return x + h.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)


class TemporalTransformer(nn.Module):
    """Attention across frames at each pixel (ModelScope-T2V's temporal transformer).

    The group norm's statistics span all frames of a clip, as in the reference. ``proj_out``
    starts at zero so that a freshly built layer is the identity and the 3D UNet computes
    exactly the 2D UNet on every frame; training then learns the motion.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, head_dim, None)])
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        batch_frames, channels, height, width = x.shape
        batch = batch_frames // num_frames
        h = x.view(batch, num_frames, channels, height, width).permute(0, 2, 1, 3, 4)
        h = self.norm(h)
        h = h.permute(0, 3, 4, 2, 1).reshape(batch * height * width, num_frames, channels)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h)
        h = h.view(batch, height, width, num_frames, channels).permute(0, 3, 4, 1, 2)
        return x + h.reshape(batch_frames, channels, height, width)
