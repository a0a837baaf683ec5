"""``model.arch: release`` against an implementation nobody here wrote: diffusers'
``I2VGenXLPipeline`` with the same tiny weights, seed and scheduler settings.

The tiny components are saved in the diffusers folder layout (``vae/``, ``text_encoder/``,
``image_encoder/``, ``tokenizer/``, ``feature_extractor/``) and our cascade reads them from
there (``clip.arch: hf``, ``vae.weights``), so the loading path is under test too.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from pipeline.generation.request import GenerationRequest
from pipeline.diffusion.samplers import sampling_timesteps
from pipeline.models.release_denoiser import ReleaseDenoiser
from reference_models import release_reference, sample_image


@pytest.fixture(scope="module")
def release_setup(tmp_path_factory):
    return release_reference(tmp_path_factory.mktemp("i2vgen_tiny"))


def test_release_timesteps_match_diffusers_leading_spacing() -> None:
    scheduler = DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    for steps in (5, 25, 50):
        scheduler.set_timesteps(steps)
        assert sampling_timesteps(steps, 1000, "leading", 1) == [int(t) for t in scheduler.timesteps]
    assert sampling_timesteps(50, 1000, "leading", 1)[:2] == [981, 961]


@pytest.mark.parametrize("guidance", [9.0, 1.0])
def test_release_base_latents_equal_i2vgenxl_pipeline(release_setup, guidance: float) -> None:
    config, pipe, cascade = release_setup
    assert isinstance(cascade.base, ReleaseDenoiser)
    image, stage = sample_image(3), config.stages.base
    request = GenerationRequest(
        image=image, prompt="a fox runs", frames=stage.frames, fps=16, steps=5, guidance=guidance,
        sampler="ddim", seed=1234, refine_from=600,
    )
    ours = cascade.base_latents([request])
    reference = pipe(
        prompt="a fox runs", image=Image.fromarray(image), height=stage.height, width=stage.width,
        target_fps=16, num_frames=stage.frames, num_inference_steps=5, guidance_scale=guidance,
        negative_prompt=config.sampling.negative_prompt, generator=torch.Generator().manual_seed(1234),
        output_type="latent",
    ).frames
    assert ours.shape == reference.shape == (1, 4, stage.frames, stage.height // 2, stage.width // 2)
    assert reference.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_release_conditions_change_the_output(release_setup) -> None:
    """The parity above would also hold for a model that ignored its conditions; it does not."""
    config, _, cascade = release_setup
    stage = config.stages.base

    def run(prompt: str, image_seed: int) -> torch.Tensor:
        request = GenerationRequest(
            image=sample_image(image_seed), prompt=prompt, frames=stage.frames, fps=16, steps=3, guidance=9.0,
            sampler="ddim", seed=7, refine_from=600,
        )
        return cascade.base_latents([request])

    same = run("a fox runs", 3)
    assert (run("a fox sleeps", 3) - same).abs().max() > 1e-3
    assert (run("a fox runs", 4) - same).abs().max() > 1e-3
