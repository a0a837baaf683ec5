"""diffusers' models built to match ours: what the parity tests and ``benchmarks/parity.py``
compare against (code nobody here wrote, run on the same tiny weights)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from PIL import Image

from pipeline.generation.cascade import Cascade
from pipeline.config import load_config
from pipeline.config.schema import Config
from pipeline.models.build import build_denoiser
from pipeline.models.release_denoiser import release_unet_kwargs

CLIP_WIDTH = 32  # the tiny CLIP's hidden and projection width = tiny_release's cross-attention width


def diffusers_unet_kwargs(cfg: Config, dims: int) -> dict:
    """Our UNet config in the terms of diffusers' ``UNet2DConditionModel`` (dims 2, SD 2.1)
    or ``UNet3DConditionModel`` (dims 3, ModelScope T2V)."""
    u = cfg.unet
    down = [f"CrossAttnDownBlock{dims}D" if a else f"DownBlock{dims}D" for a in u.attention_levels]
    up = [f"CrossAttnUpBlock{dims}D" if a else f"UpBlock{dims}D" for a in reversed(u.attention_levels)]
    kwargs = dict(
        in_channels=u.in_channels, out_channels=u.out_channels, block_out_channels=tuple(u.block_out_channels),
        down_block_types=tuple(down), up_block_types=tuple(up), layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_num_groups, cross_attention_dim=u.cross_attention_dim,
    )
    if dims == 2:  # SD 2.1's quirk: "attention_head_dim" holds the number of heads per level
        kwargs.update(attention_head_dim=tuple(c // u.head_dim for c in u.block_out_channels), use_linear_projection=True)
    else:
        kwargs.update(attention_head_dim=u.head_dim)
    return kwargs


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Small random values everywhere, so zero-initialised layers take part too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale_one = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if scale_one else 0.0))


def sample_image(seed: int) -> np.ndarray:
    """A smooth 48x80 picture (not square, not the stage's size: the crops matter)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((80, 48), Image.Resampling.BICUBIC))


def _tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    """A character-level CLIP BPE (no merges): every lowercase letter, alone and word-final."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [f"{c}</w>" for c in letters]
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def release_reference(
    root: Path, overrides: Optional[list[str]] = None, device: str | torch.device = "cpu"
) -> tuple[Config, I2VGenXLPipeline, Cascade]:
    """Tiny ``I2VGenXLPipeline`` components saved under ``root`` in the diffusers layout,
    the pipeline over them, and our cascade reading the same folders (``clip.arch: hf``,
    ``vae.weights``) with the same UNet weights."""
    config = load_config("tiny_release", overrides=[
        *(overrides or []), "clip.arch=hf", f"clip.weights={root}", f"vae.weights={root / 'vae'}",
    ])
    torch.manual_seed(0)
    levels = len(config.vae.block_out_channels)
    vae = AutoencoderKL(
        block_out_channels=list(config.vae.block_out_channels), norm_num_groups=config.vae.norm_num_groups,
        latent_channels=4, down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
    )
    with torch.no_grad():  # a near-deterministic posterior: the pipeline samples it from the global RNG
        vae.quant_conv.bias[4:] = -40.0
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=54, hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=CLIP_WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=CLIP_WIDTH,
    ))
    feature_extractor = transformers.CLIPImageProcessor(crop_size=32, size=32)
    unet = I2VGenXLUNet(**release_unet_kwargs(config.unet))
    randomise(unet, seed=1)
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
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    ours = build_denoiser(config, "base")
    ours.unet.load_state_dict(unet.state_dict())
    return config, pipe, Cascade(config, ours, None, device)
