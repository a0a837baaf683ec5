"""The training objective: it trains (loss falls on a fixed clip) and touches every part."""

from __future__ import annotations

import pytest
import torch

from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.models.build import build_denoiser
from pipeline.models.conditioning import DiffusionBatch
from training.losses import diffusion_loss


def _batch(cfg, stage: str, frames: int = 4) -> DiffusionBatch:
    s = getattr(cfg.stages, stage)
    f = cfg.vae.factor
    latents = torch.randn(2, cfg.unet.in_channels, frames, s.height // f, s.width // f) * 0.5
    ctx_len = 1 if stage == "base" else 77
    features = {"image_embeds" if stage == "base" else "text": torch.randn(2, ctx_len, cfg.unet.cross_attention_dim)}
    conditioning = build_denoiser(cfg, stage, device="meta").conditioning
    return DiffusionBatch(latents, conditioning.conditions(latents, features, torch.tensor([4, 8])))


@pytest.mark.slow  # the CLI overfit run in test_training.py checks the same end to end
def test_loss_falls_when_fitting_one_clip(tiny) -> None:
    model = build_denoiser(tiny, "base").train()
    schedule = NoiseSchedule(tiny.diffusion)
    batch = _batch(tiny, "base")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        g = torch.Generator().manual_seed(0)  # same t, noise and dropout each step
        loss, _ = diffusion_loss(model, schedule, batch, tiny, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_gradients_reach_the_global_encoder_and_temporal_layers(tiny) -> None:
    model = build_denoiser(tiny, "base").train()
    # the temporal layers' last weights start at zero, so their gradients come through them
    loss, _ = diffusion_loss(model, NoiseSchedule(tiny.diffusion), _batch(tiny, "base"), tiny,
                             torch.Generator().manual_seed(1))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["global_encoder.layers.0.weight"].abs().sum() > 0
    assert grads["unet.down_blocks.0.temp_convs.0.conv4.3.weight"].abs().sum() > 0
    assert grads["unet.transformer_in.proj_out.weight"].abs().sum() > 0


def test_refiner_trains_only_below_its_max_timestep(tiny) -> None:
    model = build_denoiser(tiny, "refiner")
    schedule = NoiseSchedule(tiny.diffusion)
    seen = [diffusion_loss(model, schedule, _batch(tiny, "refiner", frames=1), tiny, torch.Generator().manual_seed(s))[1]
            for s in range(20)]
    assert torch.cat(seen).max() < tiny.stages.refiner.max_timestep == 600
    assert torch.cat(seen).max() > 300  # and the range is really used
