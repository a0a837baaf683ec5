"""``model.arch: release`` against an implementation nobody here wrote: diffusers'
``I2VGenXLPipeline`` with the same tiny weights, seed and scheduler settings.

The tiny components are saved in the diffusers folder layout (``vae/``, ``text_encoder/``,
``image_encoder/``, ``tokenizer/``, ``feature_extractor/``) and our cascade reads them from
there (``clip.arch: hf``, ``vae.weights``), so the loading path is under test too.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from inference.cascade import Cascade
from inference.request import GenerationRequest
from pipeline.config import load_config
from pipeline.diffusion.samplers import sampling_timesteps
from pipeline.models.build import build_denoiser
from pipeline.models.release_denoiser import ReleaseDenoiser, release_unet_kwargs

transformers = pytest.importorskip("transformers")
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet  # noqa: E402

WIDTH = 32  # tiny CLIP: hidden and projection width, the UNet's cross-attention width


def _tokenizer(folder) -> "transformers.CLIPTokenizer":
    """A character-level CLIP BPE (no merges): every lowercase letter, alone and word-final."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [f"{c}</w>" for c in letters]
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Small random values everywhere, so zero-initialised layers take part too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale_one = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if scale_one else 0.0))


@pytest.fixture(scope="module")
def release_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2vgen_tiny")
    config = load_config("tiny_release", overrides=["clip.arch=hf", f"clip.weights={root}", f"vae.weights={root / 'vae'}"])
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], norm_num_groups=8, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    with torch.no_grad():  # a near-deterministic posterior: the pipeline samples it from the global RNG
        vae.quant_conv.bias[4:] = -40.0
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=54, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=WIDTH,
    ))
    feature_extractor = transformers.CLIPImageProcessor(crop_size=32, size=32)
    unet = I2VGenXLUNet(**release_unet_kwargs(config.unet))
    _randomise(unet, seed=1)
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True, prediction_type="v_prediction",
        timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True, clip_sample=False,
    )
    tokenizer = _tokenizer(root / "tokenizer")
    vae.save_pretrained(root / "vae")
    text_encoder.save_pretrained(root / "text_encoder")
    image_encoder.save_pretrained(root / "image_encoder")
    feature_extractor.save_pretrained(root / "feature_extractor")
    # The pipeline (deprecated since diffusers 0.33.1) reaches the final norm through
    # `text_encoder.text_model`, which transformers 5 no longer has; point it at the same layer.
    object.__setattr__(text_encoder, "text_model", SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm))
    pipe = I2VGenXLPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, image_encoder=image_encoder.eval(),
        feature_extractor=feature_extractor, unet=unet.eval(), scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    ours = build_denoiser(config, "base")
    ours.unet.load_state_dict(unet.state_dict())
    return config, pipe, Cascade(config, ours, None)


def _image(seed: int) -> np.ndarray:
    """A smooth 48x80 picture (not square, not the stage's size: the crops matter)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((80, 48), Image.Resampling.BICUBIC))


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
    image, stage = _image(3), config.stages.base
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
            image=_image(image_seed), prompt=prompt, frames=stage.frames, fps=16, steps=3, guidance=9.0,
            sampler="ddim", seed=7, refine_from=600,
        )
        return cascade.base_latents([request])

    same = run("a fox runs", 3)
    assert (run("a fox sleeps", 3) - same).abs().max() > 1e-3
    assert (run("a fox runs", 4) - same).abs().max() > 1e-3
