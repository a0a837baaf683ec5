"""The 3D UNet of I2VGen-XL, in the ModelScope-T2V / VideoComposer form the paper inherits.

SD 2.1's 2D UNet runs on every frame (activations are ``(batch * frames, C, H, W)``); after
each spatial ResNet block comes a temporal convolution and after each spatial transformer a
temporal transformer, plus one temporal transformer right after ``conv_in``. Every temporal
layer starts as the identity, so at init this UNet computes exactly the 2D UNet frame by
frame. Module names match diffusers' ``UNet3DConditionModel`` (and SD 2.1's
``UNet2DConditionModel`` for the spatial part), so public state dicts load without renaming.

Read top to bottom: blocks, then the UNet's ``__init__`` and ``forward``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config.schema import UNetConfig
from pipeline.models.attention import SpatialTransformer, TemporalTransformer
from pipeline.models.blocks import Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D
from pipeline.models.embeddings import TimestepEmbedding, fps_embedding, sinusoidal_embedding


class _LayerStack(nn.Module):
    """ResNet -> temporal conv [-> spatial transformer -> temporal transformer], repeated.

    Shared by the down and up blocks, which differ only in their channel bookkeeping and
    resampler.
    """

    resnets: nn.ModuleList
    temp_convs: nn.ModuleList
    attentions: nn.ModuleList
    temp_attentions: nn.ModuleList

    def _build(self, resnet_in: list[int], out: int, temb: int, attention: bool, cfg: UNetConfig) -> None:
        groups, heads = cfg.norm_num_groups, out // cfg.head_dim
        self.resnets = nn.ModuleList(ResnetBlock2D(c, out, temb, groups) for c in resnet_in)
        self.temp_convs = nn.ModuleList(
            TemporalConvLayer(out, groups, cfg.temporal_dropout) for _ in resnet_in
        )
        n_attn = len(resnet_in) if attention else 0
        self.attentions = nn.ModuleList(
            SpatialTransformer(out, heads, cfg.head_dim, cfg.cross_attention_dim, groups)
            for _ in range(n_attn)
        )
        self.temp_attentions = nn.ModuleList(
            TemporalTransformer(out, heads, cfg.head_dim, groups) for _ in range(n_attn)
        )

    def _layer(self, i: int, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.temp_convs[i](self.resnets[i](h, temb), frames)
        if self.attentions:
            h = self.temp_attentions[i](self.attentions[i](h, context), frames)
        return h


class DownBlock3D(_LayerStack):
    def __init__(self, in_ch: int, out_ch: int, temb: int, attention: bool, downsample: bool, cfg: UNetConfig) -> None:
        super().__init__()
        self._build([in_ch] + [out_ch] * (cfg.layers_per_block - 1), out_ch, temb, attention, cfg)
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)] if downsample else [])

    def forward(self, h, temb, context, frames, run: Callable) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            h = run(self._layer, i, h, temb, context, frames)
            skips.append(h)
        for down in self.downsamplers:
            h = down(h)
            skips.append(h)
        return h, skips


class UpBlock3D(_LayerStack):
    def __init__(
        self, prev_ch: int, out_ch: int, skip_chs: list[int], temb: int, attention: bool, upsample: bool, cfg: UNetConfig
    ) -> None:
        super().__init__()
        resnet_in = [(prev_ch if i == 0 else out_ch) + s for i, s in enumerate(skip_chs)]
        self._build(resnet_in, out_ch, temb, attention, cfg)
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)] if upsample else [])

    def forward(self, h, skips: list[torch.Tensor], temb, context, frames, run: Callable, next_size) -> torch.Tensor:
        for i in range(len(self.resnets)):
            h = torch.cat([h, skips.pop()], dim=1)
            h = run(self._layer, i, h, temb, context, frames)
        for up in self.upsamplers:
            h = up(h, next_size)
        return h


class MidBlock3D(nn.Module):
    """ResNet, temporal conv, then spatial and temporal attention, then ResNet, temporal conv."""

    def __init__(self, ch: int, temb: int, cfg: UNetConfig) -> None:
        super().__init__()
        groups, heads = cfg.norm_num_groups, ch // cfg.head_dim
        self.resnets = nn.ModuleList(ResnetBlock2D(ch, ch, temb, groups) for _ in range(2))
        self.temp_convs = nn.ModuleList(TemporalConvLayer(ch, groups, cfg.temporal_dropout) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialTransformer(ch, heads, cfg.head_dim, cfg.cross_attention_dim, groups)])
        self.temp_attentions = nn.ModuleList([TemporalTransformer(ch, heads, cfg.head_dim, groups)])

    def forward(self, h, temb, context, frames) -> torch.Tensor:
        h = self.temp_convs[0](self.resnets[0](h, temb), frames)
        h = self.temp_attentions[0](self.attentions[0](h, context), frames)
        return self.temp_convs[1](self.resnets[1](h, temb), frames)


class UNet3D(nn.Module):
    """Predicts the diffusion target for a noisy video latent ``(B, C, F, H, W)``.

    ``context`` is the cross-attention sequence ``(B, L, cross_attention_dim)``: CLIP image
    plus global-encoder features for the base, CLIP text features for the refiner.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        groups = cfg.norm_num_groups

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.fps_embedding = fps_embedding(ch[0], temb) if cfg.use_fps_embedding else None
        self.transformer_in = TemporalTransformer(ch[0], cfg.conv_in_temporal_heads, cfg.head_dim, groups)

        self.down_blocks = nn.ModuleList()
        skip_channels = [ch[0]]
        for i, out in enumerate(ch):
            last = i == len(ch) - 1
            in_ch = ch[max(i - 1, 0)]
            self.down_blocks.append(DownBlock3D(in_ch, out, temb, cfg.attention_levels[i], not last, cfg))
            skip_channels += [out] * (cfg.layers_per_block + (0 if last else 1))

        self.mid_block = MidBlock3D(ch[-1], temb, cfg)

        self.up_blocks = nn.ModuleList()
        prev = ch[-1]
        for i, out in enumerate(reversed(ch)):
            level = len(ch) - 1 - i
            skips = [skip_channels.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(
                UpBlock3D(prev, out, skips, temb, cfg.attention_levels[level], level > 0, cfg)
            )
            prev = out

        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        fps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        batch, channels, frames, height, width = sample.shape
        timestep = torch.as_tensor(timestep, device=sample.device).expand(batch)
        emb = self.time_embedding(sinusoidal_embedding(timestep, self.config.block_out_channels[0]).to(sample.dtype))
        if self.fps_embedding is not None:
            if fps is None:
                raise ValueError("this UNet has an FPS embedding: pass fps (one value per sample)")
            fps = torch.as_tensor(fps, device=sample.device).expand(batch)
            emb = emb + self.fps_embedding(sinusoidal_embedding(fps, self.config.block_out_channels[0]).to(sample.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        context = context.to(sample.dtype).repeat_interleave(frames, dim=0)

        h = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        h = self.transformer_in(self.conv_in(h), frames)

        run = self._checkpointed if self.config.gradient_checkpointing and self.training else _direct
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context, frames, run)
            skips += block_skips
        h = self.mid_block(h, emb, context, frames)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            next_size = tuple(skips[-1].shape[-2:]) if skips else None
            h = block(h, block_skips, emb, context, frames, run, next_size)

        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return h.view(batch, frames, -1, height, width).transpose(1, 2)

    @staticmethod
    def _checkpointed(fn: Callable, *args) -> torch.Tensor:
        return checkpoint(fn, *args, use_reentrant=False)


def _direct(fn: Callable, *args) -> torch.Tensor:
    return fn(*args)
