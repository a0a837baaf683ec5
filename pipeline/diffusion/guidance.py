"""Classifier-free guidance: one batched forward for the conditional and null branches."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from pipeline.diffusion.samplers import Denoise

# model(x_t, t, keep_condition=..., **conditions) -> prediction
GuidableModel = Callable[..., torch.Tensor]


def guided(
    model: GuidableModel,
    conditions: Mapping[str, Optional[torch.Tensor]],
    guidance: float | torch.Tensor,
) -> Denoise:
    """A ``denoise(x_t, t)`` for the samplers: ``null + guidance * (cond - null)``.

    The null branch is the same model with its condition switched off through
    ``keep_condition`` (the path condition dropout trained), and both branches run as one
    batch of ``2B`` rows. ``guidance`` is one scale or one per row (a batch of requests
    that differ only in their scale shares every forward). With all scales 1 only the
    conditional branch runs.
    """
    scale = torch.as_tensor(guidance, dtype=torch.float32)
    conditional_only = bool((scale == 1.0).all())

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        batch = x.shape[0]
        step = torch.full((batch,), t, device=x.device, dtype=torch.long)
        if conditional_only:
            return model(x, step, keep_condition=None, **conditions)
        doubled = {k: None if v is None else torch.cat([v, v]) for k, v in conditions.items()}
        keep = torch.cat([torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool)]).to(x.device)
        both = model(torch.cat([x, x]), torch.cat([step, step]), keep_condition=keep, **doubled)
        cond, null = both.chunk(2)
        per_row = scale.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return null + per_row * (cond - null)

    return denoise
