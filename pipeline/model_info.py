"""Parameter counts per part and FLOPs per forward, computed on the meta device.

Nothing is allocated: the paper-size cascade (about 1.4B parameters per UNet plus a 1B CLIP)
is built without memory, and FLOPs come from ``torch.utils.flop_counter`` over one forward
at the stage's training shape, batch 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config.schema import Config
from pipeline.models.build import Denoiser, build_autoencoder, build_clip, build_denoiser
from pipeline.models.parts import parameter_part


@dataclass
class StageInfo:
    stage: str
    params: dict[str, int]  # trainable parts: spatial, temporal, embedding, global_encoder
    frozen: dict[str, int]  # clip_image / clip_text / vae
    shape: tuple[int, ...]  # (B, C, F, h, w) of the latent one forward sees
    forward_flops: int

    @property
    def trainable(self) -> int:
        return sum(self.params.values())


def count_parts(model: Denoiser) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for name, p in model.named_parameters():
        counts[parameter_part(name)] += p.numel()
    return {k: counts.get(k, 0) for k in ("spatial", "temporal", "embedding", "global_encoder")}


def latent_shape(config: Config, stage: str, batch: int = 1) -> tuple[int, int, int, int, int]:
    s = getattr(config.stages, stage)
    f = config.vae.factor
    return (batch, config.unet.in_channels, s.frames, s.height // f, s.width // f)


def forward_flops(model: Denoiser, config: Config, stage: str, device: str = "meta") -> int:
    """FLOPs of one forward (multiply-add counted as 2) at the stage's shape, batch 1."""
    x = torch.zeros(latent_shape(config, stage), device=device)
    conditions = model.conditioning.example_conditions(x, config.unet.cross_attention_dim)
    step = torch.zeros(1, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, step, **conditions)
    return int(counter.get_total_flops())


def stage_info(config: Config, stage: str) -> StageInfo:
    model = build_denoiser(config, stage, device="meta")
    clip = build_clip(config.clip, device="meta")
    clip_image = sum(p.numel() for n, p in clip.model.named_parameters() if n.startswith("visual."))
    clip_total = sum(p.numel() for p in clip.model.parameters())
    vae = sum(p.numel() for p in build_autoencoder(config.vae, device="meta").parameters())
    conditioning = model.conditioning
    frozen = ({"clip_image": clip_image} if conditioning.image_features else {}) | (
        {"clip_text": clip_total - clip_image} if conditioning.text_features else {}) | {"vae": vae}
    return StageInfo(stage, count_parts(model), frozen, latent_shape(config, stage), forward_flops(model, config, stage))


def format_info(infos: list[StageInfo]) -> str:
    lines = []
    for info in infos:
        lines.append(f"{info.stage}: latent {tuple(info.shape)}")
        for part, n in info.params.items():
            lines.append(f"  {part:<16}{n:>16,}")
        lines.append(f"  {'trainable':<16}{info.trainable:>16,}")
        for part, n in info.frozen.items():
            lines.append(f"  {part + ' (frozen)':<16}{n:>16,}")
        lines.append(f"  {'forward GFLOPs':<16}{info.forward_flops / 1e9:>16,.1f}")
    return "\n".join(lines)
