"""The EMA: a warm-up from the first updates, and under bf16 the fp32 master weights that a
real DeepSpeed engine keeps, not the module's bf16 copies."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from training.optim import EMA


def test_warm_up_makes_early_exports_follow_training() -> None:
    model = nn.Linear(4, 4)
    start = model.weight.detach().clone()
    ema = EMA(model, decay=0.99, zero3=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)  # decay min(0.99, 1/10): the average moves 90% of the way at once
    assert torch.allclose(ema.shadow["weight"], start + 0.9)
    assert [round(ema.decay_at(n), 4) for n in (0, 10, 100, 10_000)] == [0.1, 0.55, 0.9182, 0.99]
    for n in range(1, 100):
        ema.update(model, n)
    # after 100 updates the initial weights weigh far less than the 37% that 0.99 alone leaves
    initial_share = float((model.weight.detach() - ema.shadow["weight"]).mean())
    assert initial_share < 0.01


@pytest.mark.slow  # a DeepSpeed engine on the CPU: about a minute
@pytest.mark.parametrize("zero_stage", [2])
def test_under_bf16_the_ema_averages_the_fp32_master_weights(zero_stage: int, monkeypatch) -> None:
    """A one-process DeepSpeed engine with bf16 on the CPU: after a step with a tiny rate the
    fp32 master weights moved by less than bf16 can represent, so the module's bf16 copies
    did not move; the EMA at decay 0 must hold the master weights exactly."""
    import deepspeed
    import torch.distributed as dist

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(29500 + os.getpid() % 1000)}.items():
        monkeypatch.setenv(key, value)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        _check_master_weights(deepspeed, zero_stage)
    finally:
        if started:
            dist.destroy_process_group()


def _check_master_weights(deepspeed, zero_stage: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    config = {"train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": zero_stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    module_before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    ema = EMA(engine.module, decay=0.0, zero3=False, master_weights=True)
    loss = engine(torch.randn(4, 16, dtype=torch.bfloat16)).float().square().mean()
    engine.backward(loss)
    engine.step()
    ema.update(engine.module, 0)
    from deepspeed.utils import safe_get_full_fp32_param

    moved_below_bf16 = 0
    for name, p in engine.module.named_parameters():
        master = safe_get_full_fp32_param(p)
        assert p.dtype == torch.bfloat16 and master.dtype == torch.float32
        assert torch.equal(ema.shadow[name], master)
        moved_below_bf16 += int(torch.equal(p.detach(), module_before[name]) and not torch.equal(master, module_before[name].float()))
    assert moved_below_bf16 > 0  # the bf16 copies would have hidden the step
