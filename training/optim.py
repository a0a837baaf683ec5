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

    Under ZeRO 0-2 every rank holds whole parameters and averages them. Under ZeRO-3 each
    rank holds one partition of every parameter (``ds_tensor``) and averages only that, with
    no communication per step; the partitions are gathered into whole tensors only when a
    checkpoint is written (``state_dict``, which every rank must call together).
    """

    def __init__(self, model: nn.Module, decay: float, zero3: bool) -> None:
        self.decay = decay
        self.zero3 = zero3
        self.shadow = {name: self._local(p).detach().float().clone() for name, p in self._trainable(model)}

    @staticmethod
    def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def _local(self, p: nn.Parameter) -> torch.Tensor:
        """What this rank holds of ``p``: all of it, or under ZeRO-3 its flat partition."""
        return p.ds_tensor if self.zero3 else p

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in self._trainable(model):
            self.shadow[name].lerp_(self._local(p).float(), 1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Whole tensors (a collective under ZeRO-3: every rank calls it)."""
        if not self.zero3:
            return {k: v.cpu() for k, v in self.shadow.items()}
        import torch.distributed as dist

        full = {}
        for name, p in self._trainable(model):
            shard = self.shadow[name]
            parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, shard)
            full[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu()
        return full

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """From whole tensors; under ZeRO-3 each rank keeps its own partition's slice."""
        rank = 0
        if self.zero3:
            import torch.distributed as dist

            rank = dist.get_rank()
        for name, p in self._trainable(model):
            shard, whole = self.shadow[name], state[name].flatten().to(self.shadow[name])
            if not self.zero3:
                shard.copy_(whole.view_as(shard))
                continue
            piece = whole[rank * shard.numel() : (rank + 1) * shard.numel()]
            shard.zero_()  # the last partition is padded
            shard[: piece.numel()].copy_(piece)
