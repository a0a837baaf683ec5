"""Public weights through the CLI: ``weights check`` on folders in the real layouts,
``weights import`` of VGen's checkpoint and of SD 2.1, then ``generate`` on the imported
model, and ``export --diffusers`` read back by diffusers itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, I2VGenXLUNet, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from checkpoint_layouts import to_ldm_vae, to_vgen
from conftest import cli_in_process as _main
from pipeline.config import load_config
from pipeline.models.release_denoiser import release_unet_kwargs
from pipeline.models.weights_check import check_folder

VGEN_UNET = "i2vgen_xl_00854500.pth"
SD_CKPT = "v2-1_512-ema-pruned.ckpt"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _release_unet(preset: str = "tiny_release", **changes) -> I2VGenXLUNet:
    return _randomised(I2VGenXLUNet(**{**release_unet_kwargs(load_config(preset).unet), **changes}), seed=2)


def _vgen_folder(folder: Path, unet: I2VGenXLUNet) -> Path:
    """VGen's ``models/``: the UNet ``.pth`` and SD 2.1's ``.ckpt`` (for its VAE); no CLIP."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": to_vgen(unet), "step": 854500}, folder / VGEN_UNET)
    vae_cfg = load_config("tiny_release").vae
    vae = AutoencoderKL(
        block_out_channels=vae_cfg.block_out_channels, norm_num_groups=vae_cfg.norm_num_groups, latent_channels=4,
        layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in to_ldm_vae(vae).items()}}, folder / SD_CKPT)
    return folder


def test_weights_check_names_present_missing_and_misfitting_files(tmp_path) -> None:
    good = _vgen_folder(tmp_path / "good", _release_unet())
    layout, reports = check_folder(good, load_config("tiny_release"))
    status = {r.part.path: r.status for r in reports}
    assert layout == "I2VGen-XL, VGen layout"
    assert status == {VGEN_UNET: "ok", SD_CKPT: "ok", "open_clip_pytorch_model.bin": "missing"}

    wide = _vgen_folder(tmp_path / "wide", _release_unet(cross_attention_dim=48))
    proc = _main("weights", "check", str(wide), "--preset", "tiny_release")
    assert proc.returncode == 1
    line = next(l for l in proc.stdout.splitlines() if VGEN_UNET in l)
    assert "MISMATCH" in line and "wrong shape" in line and "(48," in line  # the file's shape is named
    assert "MISSING" in proc.stdout and "open_clip_pytorch_model.bin" in proc.stdout


def test_vgen_checkpoint_imports_and_generates(tmp_path) -> None:
    """The released model in VGen's layout -> our stage file -> a video; and the diffusers
    folder written beside it is diffusers' own I2VGenXLUNet, with VGen's 2x concat folded in."""
    unet = _release_unet()
    folder = _vgen_folder(tmp_path / "models", unet)
    base, exported = tmp_path / "release_base.safetensors", tmp_path / "diffusers"
    proc = _main("weights", "import", str(folder / VGEN_UNET), "--preset", "tiny_release", "--out", str(base),
                "--diffusers", str(exported))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "released I2VGen-XL UNet" in proc.stdout

    reloaded = I2VGenXLUNet.from_pretrained(exported / "unet")
    source, back = unet.state_dict(), reloaded.state_dict()
    assert torch.equal(back["conv_in.weight"][:, 4:], 2 * source["conv_in.weight"][:, 4:])
    assert all(torch.equal(back[k], v) for k, v in source.items() if k != "conv_in.weight")
    assert (exported / "scheduler" / "scheduler_config.json").is_file()

    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((40, 72, 3)) * 255).astype(np.uint8)).save(image)
    video = tmp_path / "video.mp4"
    proc = _main("generate", "--preset", "tiny_release", "--base", str(base), "--image", str(image),
                "--prompt", "a boat", "--steps", "3", "--out", str(video),
                "--set", f"vae.weights={folder / SD_CKPT}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = decord.VideoReader(str(video))
    stage = load_config("tiny_release").stages.base
    assert len(frames) == stage.frames and frames[0].shape == (stage.height, stage.width, 3)


def test_sd_unet_imports_into_the_spatial_layers(tmp_path) -> None:
    """SD's diffusers folder -> a paper base whose spatial weights are SD's and whose
    temporal layers are still the identity (their last layers zero)."""
    tiny = load_config("tiny")
    u = tiny.unet
    sd = _randomised(UNet2DConditionModel(
        in_channels=u.in_channels, out_channels=u.out_channels, block_out_channels=tuple(u.block_out_channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels)),
        layers_per_block=u.layers_per_block, norm_num_groups=u.norm_num_groups, cross_attention_dim=u.cross_attention_dim,
        attention_head_dim=tuple(c // u.head_dim for c in u.block_out_channels), use_linear_projection=True,
    ), seed=3)
    sd.save_pretrained(tmp_path / "sd21" / "unet")
    out = tmp_path / "sd_base.safetensors"
    # SD 2.1's conv_in reads x_t alone: a base that concatenates the image latent does not take it
    proc = _main("weights", "import", str(tmp_path / "sd21"), "--preset", "tiny", "--out", str(out),
                 "--set", "model.image_concat=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SD spatial layers" in proc.stdout
    state = load_file(str(out))
    for key, value in sd.state_dict().items():
        assert torch.equal(state[f"unet.{key}"], value), key
    zeroed = [k for k in state if k.endswith(("conv4.3.weight", "proj_out.weight")) and "temp" in k]
    assert zeroed and all(not state[k].any() for k in zeroed)


def test_import_of_a_mismatched_checkpoint_names_the_key(tmp_path) -> None:
    folder = _vgen_folder(tmp_path / "models", _release_unet(cross_attention_dim=48))
    proc = _main("weights", "import", str(folder / VGEN_UNET), "--preset", "tiny_release",
                "--out", str(tmp_path / "x.safetensors"))
    assert proc.returncode == 2
    assert "wrong shape" in proc.stderr and VGEN_UNET in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_release_fine_tune_from_vgen_weights_then_export(tmp_path) -> None:
    """The released model fine-tuned with our DeepSpeed job: --init VGen's .pth, two steps,
    then export both ways."""
    from support.synthetic import write_sample_corpus

    unet = _release_unet()
    folder = _vgen_folder(tmp_path / "models", unet)
    write_sample_corpus(tmp_path / "corpus", videos=1, seed=5)
    assert _cli("curate", str(tmp_path / "corpus"), "--out", str(tmp_path / "data"), "--preset", "tiny",
                "--quiet").returncode == 0
    run = tmp_path / "run"
    proc = _cli("train", "--stage", "base", "--data", str(tmp_path / "data"), "--run", str(run),
                "--preset", "tiny_release", "--max-steps", "2", "--checkpoint-every", "2",
                "--init", str(folder / VGEN_UNET))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "released I2VGen-XL UNet" in proc.stdout + proc.stderr
    proc = _cli("export", str(run), "--out", str(tmp_path / "ft.safetensors"), "--diffusers", str(tmp_path / "ft"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned = I2VGenXLUNet.from_pretrained(tmp_path / "ft" / "unet").state_dict()
    start = unet.state_dict()
    assert any(not torch.equal(tuned[k], start[k]) for k in start if k != "conv_in.weight")
