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
    guidance: float,
) -> Denoise:
    """A ``denoise(x_t, t)`` for the samplers: ``null + guidance * (cond - null)``.

    The null branch is the same model with its condition switched off through
    ``keep_condition`` (the path condition dropout trained), and both branches run as one
    batch of ``2B`` rows. With ``guidance == 1`` only the conditional branch runs.
    """

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        batch = x.shape[0]
        step = torch.full((batch,), t, device=x.device, dtype=torch.long)
        if guidance == 1.0:
            return model(x, step, keep_condition=None, **conditions)
        doubled = {k: None if v is None else torch.cat([v, v]) for k, v in conditions.items()}
        keep = torch.cat([torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool)]).to(x.device)
        both = model(torch.cat([x, x]), torch.cat([step, step]), keep_condition=keep, **doubled)
        cond, null = both.chunk(2)
        return null + guidance * (cond - null)

    return denoise
