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


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, fused: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the two groups (``fused``: one kernel for all parameters, CUDA only) and
    the warm-up schedule that keeps their ratio."""
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                  fused=fused or None)
    warmup = max(cfg.warmup_steps, 0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return optimizer, lr_scheduler


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate each named group is using now (read from the running optimizer)."""
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


class EMA:
    """An fp32 exponential moving average of the weights, saved with every checkpoint.

    It averages the fp32 master weights: under bf16 the module holds bf16 copies, whose
    rounding would be averaged in, so it reads DeepSpeed's fp32 partitions instead
    (``master_weights``); in fp32 the module's parameters are those weights.

    Update ``n`` (0-based) uses ``min(decay, (1 + n) / (10 + n))``: the decay grows from 0.1
    towards its set value, so an export after a short run holds the trained weights, not
    mostly the initial ones (with 0.99 and no warm-up, 37% of the weights after 100 steps).

    Under ZeRO 0-2 every rank holds whole parameters and averages them. Under ZeRO-3 each
    rank holds one partition of every parameter (``ds_tensor``) and averages only that, with
    no communication per step; the partitions are gathered into whole tensors only when a
    checkpoint is written (``state_dict``, which every rank must call together).
    """

    def __init__(self, model: nn.Module, decay: float, zero3: bool, master_weights: bool = False) -> None:
        self.decay = decay
        self.zero3 = zero3
        self.master_weights = master_weights
        self.shadow = {name: self._local(p).detach().float().clone() for name, p in self._trainable(model)}

    @staticmethod
    def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def _local(self, p: nn.Parameter) -> torch.Tensor:
        """What this rank holds of ``p`` (all of it, or under ZeRO-3 its flat partition),
        read from the fp32 master weights when the module holds low-precision copies."""
        if self.master_weights:
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

            return safe_get_local_fp32_param(p) if self.zero3 else safe_get_full_fp32_param(p)
        return p.ds_tensor if self.zero3 else p

    def decay_at(self, update: int) -> float:
        """The decay of 0-based update ``update``, after the warm-up."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, model: nn.Module, update: int) -> None:
        """Fold in the current weights; ``update`` counts the updates before this one (the
        optimizer step), so a resumed run continues the same decay sequence."""
        weight = 1.0 - self.decay_at(update)
        for name, p in self._trainable(model):
            self.shadow[name].lerp_(self._local(p).float().view_as(self.shadow[name]), weight)

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
