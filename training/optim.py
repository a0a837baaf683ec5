"""Optimizer, learning-rate schedule and EMA for one stage.

The paper updates SD 2.1's spatial layers at gamma = 0.2 times the rate of the temporal
layers and new modules. Two AdamW parameter groups carry the two rates, and the schedule is
a ``LambdaLR`` that multiplies each group's own base rate, so the ratio holds at every step
(DeepSpeed's ``WarmupLR`` would overwrite both groups with one scalar).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from pipeline.config.schema import TrainConfig
from pipeline.models.parts import parameter_part


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    spatial, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (spatial if parameter_part(name) == "spatial" else other).append(p)
    return [
        {"params": other, "lr": cfg.lr, "name": "temporal"},
        {"params": spatial, "lr": cfg.lr * cfg.spatial_lr_scale, "name": "spatial"},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return optimizer, schedule


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate each named group is using now (read from the running optimizer)."""
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


class EMA:
    """An fp32 exponential moving average of the weights, saved with every checkpoint.

    Under ZeRO-3 each rank holds a shard of every parameter, so the update gathers them
    (a collective every rank joins); under ZeRO 0-2 the parameters are whole on every rank.
    """

    def __init__(self, model: nn.Module, decay: float, zero3: bool) -> None:
        self.decay = decay
        self.zero3 = zero3
        self.shadow = {name: p.detach().float().clone() for name, p in self._full(model)}

    def _full(self, model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.zero3:
            yield from params
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            for name, p in params:
                yield name, p.detach().clone()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in self._full(model):
            self.shadow[name].lerp_(p.float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
