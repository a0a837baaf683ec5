"""The diffusion core: schedules, conversions, samplers, re-noising, guidance.

Reference values come from diffusers' schedulers (written independently of this code) and
from exact "oracle" denoisers whose answer is known in closed form.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from pipeline.config.schema import DiffusionConfig
from pipeline.diffusion.guidance import guided
from pipeline.diffusion.noising import (
    add_image_to_first_frame,
    condition_keep_mask,
    renoise,
    sample_noise,
    sample_timesteps,
)
from pipeline.diffusion.samplers import (
    ddim_invert,
    ddim_sample,
    dpm_solver_pp_sample,
    sampling_timesteps,
)
from pipeline.diffusion.noise_schedule import NoiseSchedule

PAPER = DiffusionConfig()  # linear_sd, v-prediction
RELEASE = DiffusionConfig(schedule="cosine", zero_terminal_snr=True)


def test_paper_schedule_is_sds_scaled_linear() -> None:
    ours = NoiseSchedule(PAPER).alphas_cumprod
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    torch.testing.assert_close(ours.float(), ref, rtol=1e-6, atol=1e-7)


def test_release_schedule_is_cosine_with_zero_terminal_snr() -> None:
    ours = NoiseSchedule(RELEASE).alphas_cumprod
    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True).alphas_cumprod
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-6)
    assert ours[-1] == 0.0


@pytest.mark.parametrize("prediction", ["v", "epsilon", "sample"])
def test_conversions_recover_x0_and_noise(prediction: str) -> None:
    schedule = NoiseSchedule(DiffusionConfig(prediction=prediction))
    x0 = torch.randn(4, 3, 2, 5, 5, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 250, 600, 999])
    x_t = schedule.add_noise(x0, eps, t)
    x0_hat, eps_hat = schedule.to_x0_eps(schedule.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_v_is_alpha_eps_minus_sigma_x0() -> None:
    schedule = NoiseSchedule(PAPER)
    x0, eps = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    t = torch.tensor([100, 800])
    ab = schedule.alphas_cumprod[t].view(-1, 1)
    torch.testing.assert_close(schedule.target(x0, eps, t), ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    # x0 = alpha * x_t - sigma * v, and eps = sigma * x_t + alpha * v, for v-prediction
    x_t = schedule.add_noise(x0, eps, t)
    v = schedule.target(x0, eps, t)
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0)


def test_trailing_timesteps() -> None:
    assert sampling_timesteps(50, 1000)[:3] == [999, 979, 959]
    assert sampling_timesteps(50, 1000)[-1] == 19
    refiner = sampling_timesteps(10, 600)
    assert refiner[0] == 599 and refiner == sorted(refiner, reverse=True) and refiner[-1] >= 0
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(0, 1000)


def _oracle(schedule: NoiseSchedule, target: torch.Tensor):
    """The exact denoiser for a data distribution that is a single point ``target``."""

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t, x)
        eps = (x - alpha * target) / sigma
        return schedule.target(target, eps, t)

    return denoise


@pytest.mark.parametrize("cfg", [PAPER, RELEASE, DiffusionConfig(prediction="epsilon")], ids=["linear-v", "zsnr-v", "linear-eps"])
@pytest.mark.parametrize("sampler", [ddim_sample, dpm_solver_pp_sample], ids=["ddim", "dpm++"])
@pytest.mark.parametrize("start, steps", [(1000, 25), (600, 8), (1000, 3)])
def test_samplers_return_the_point_an_oracle_denoises_to(cfg, sampler, start, steps) -> None:
    schedule = NoiseSchedule(cfg)
    target = torch.randn(2, 4, 3, 6, 6, dtype=torch.float64)
    x = torch.randn_like(target)
    out = sampler(schedule, _oracle(schedule, target), x, sampling_timesteps(steps, start))
    torch.testing.assert_close(out, target, rtol=1e-6, atol=1e-6)


def _smooth_denoiser(x: torch.Tensor, t: int) -> torch.Tensor:
    """A nonlinear, timestep-dependent stand-in for a network (not an oracle)."""
    return torch.tanh(0.7 * x) * (0.5 + t / 2000) + 0.1 * torch.sin(3 * x)


def _run_diffusers(scheduler, x: torch.Tensor) -> torch.Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(_smooth_denoiser(x, int(t)), t, x).prev_sample
    return x


def test_ddim_matches_diffusers() -> None:
    schedule = NoiseSchedule(PAPER)
    ref = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
    )
    ref.set_timesteps(20)
    x = torch.randn(2, 4, 3, 8, 8)
    ours = ddim_sample(schedule, _smooth_denoiser, x.clone(), sampling_timesteps(20, 1000))
    assert [int(t) for t in ref.timesteps] == sampling_timesteps(20, 1000)
    torch.testing.assert_close(ours, _run_diffusers(ref, x.clone()), rtol=1e-4, atol=1e-4)


def test_dpm_solver_pp_matches_diffusers() -> None:
    schedule = NoiseSchedule(PAPER)
    ref = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero",
    )
    ref.set_timesteps(20)
    x = torch.randn(2, 4, 3, 8, 8)
    assert [int(t) for t in ref.timesteps] == sampling_timesteps(20, 1000)
    ours = dpm_solver_pp_sample(schedule, _smooth_denoiser, x.clone(), sampling_timesteps(20, 1000))
    torch.testing.assert_close(ours, _run_diffusers(ref, x.clone()), rtol=1e-4, atol=1e-4)


def test_ddim_with_eta_injects_noise_but_keeps_the_oracle_point() -> None:
    schedule = NoiseSchedule(PAPER)
    target = torch.randn(1, 2, 2, 4, 4, dtype=torch.float64)
    x = torch.randn_like(target)
    g = torch.Generator().manual_seed(3)
    out = ddim_sample(schedule, _oracle(schedule, target), x, sampling_timesteps(10, 1000), eta=1.0, generator=g)
    torch.testing.assert_close(out, target, rtol=1e-6, atol=1e-6)


def test_renoise_gives_the_marginal_of_the_schedule() -> None:
    schedule = NoiseSchedule(PAPER)
    x0 = torch.full((200_000,), 0.8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    t_r = 599
    x = renoise(schedule, x0, t_r, generator=g)
    ab = schedule.alphas_cumprod[t_r].item()
    # mean sqrt(ab) * x0 and variance 1 - ab; standard errors at n = 200k are ~0.002
    assert abs(x.mean().item() - ab**0.5 * 0.8) < 0.01
    assert abs(x.var().item() - (1 - ab)) < 0.01


def test_ddim_inversion_round_trips() -> None:
    schedule = NoiseSchedule(PAPER)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        return 0.3 * torch.tanh(x)

    x0 = torch.randn(1, 2, 2, 4, 4, dtype=torch.float64)
    steps = sampling_timesteps(200, 600)
    x_tr = ddim_invert(schedule, denoise, x0, steps)
    assert not torch.allclose(x_tr, x0)
    back = ddim_sample(schedule, denoise, x_tr, steps)
    torch.testing.assert_close(back, x0, rtol=0.02, atol=0.02)


def test_offset_noise_adds_one_shift_per_sample_channel_frame() -> None:
    g = torch.Generator().manual_seed(1)
    noise = sample_noise((64, 4, 8, 16, 16), offset=0.1, generator=g)
    means = noise.mean(dim=(-1, -2))  # per (b, c, f)
    # variance of the per-frame mean: offset^2 + 1 / (H * W)
    assert abs(means.var().item() - (0.01 + 1 / 256)) < 0.002
    plain = sample_noise((64, 4, 8, 16, 16), offset=0.0, generator=g)
    assert abs(plain.mean(dim=(-1, -2)).var().item() - 1 / 256) < 0.001


def test_detail_encoder_adds_the_image_to_frame_zero_only() -> None:
    noise = torch.randn(2, 4, 5, 6, 6)
    image = torch.randn(2, 4, 6, 6)
    out = add_image_to_first_frame(noise, image)
    torch.testing.assert_close(out[:, :, 0], noise[:, :, 0] + image)
    torch.testing.assert_close(out[:, :, 1:], noise[:, :, 1:])


def test_timesteps_and_condition_dropout_rates() -> None:
    g = torch.Generator().manual_seed(2)
    t = sample_timesteps(50_000, 600, generator=g)
    assert t.min() >= 0 and t.max() == 599
    keep = condition_keep_mask(50_000, 0.1, generator=g)
    assert abs((~keep).float().mean().item() - 0.1) < 0.01


def test_guidance_combines_conditional_and_null_branches_in_one_batch() -> None:
    calls = []

    def model(x, t, keep_condition=None, context=None):
        calls.append(x.shape[0])
        on = torch.ones(x.shape[0]) if keep_condition is None else keep_condition.float()
        return x * 0 + on.view(-1, 1) * context.sum(-1, keepdim=True) + 1.0

    x = torch.zeros(3, 2)
    context = torch.tensor([[1.0], [2.0], [3.0]])
    out = guided(model, {"context": context}, guidance=4.0)(x, 10)
    # null branch predicts 1, conditional 1 + c: guided = 1 + 4 * c
    torch.testing.assert_close(out, 1 + 4 * context.expand(3, 2))
    assert calls == [6]
    out1 = guided(model, {"context": context}, guidance=1.0)(x, 10)
    torch.testing.assert_close(out1, 1 + context.expand(3, 2))
    assert calls == [6, 3]
