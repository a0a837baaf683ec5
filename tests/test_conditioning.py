"""One ``Conditioning`` per architecture: what each stage reads, and a third architecture
(``tests/toy_architecture.py``, one file) that encodes, trains and generates through the
public commands with no edit to the system."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.models.build import build_denoiser

TOY = "model.arch=tests.toy_architecture:build"


@pytest.mark.parametrize("preset, stage, stored, null_prompt", [
    ("tiny", "base", ("latents", "image_embeds"), False),
    ("tiny", "refiner", ("latents", "text"), False),
    ("tiny_release", "base", ("latents", "image_embeds", "text"), True),
])
def test_each_architecture_declares_what_it_reads(preset, stage, stored, null_prompt) -> None:
    conditioning = build_denoiser(load_config(preset), stage, device="meta").conditioning
    assert conditioning.stored == stored and conditioning.null_prompt == null_prompt


def test_an_architecture_that_cannot_be_found_names_the_key() -> None:
    for name in ("resnet", "tests.no_such_module:build", "tests.toy_architecture:no_such_factory"):
        with pytest.raises(ConfigError, match="model.arch"):
            build_denoiser(load_config("tiny", overrides=[f"model.arch={name}"]), "base", device="meta")


def test_conditions_from_stored_features_equal_those_from_pixels() -> None:
    """The toy's conditions are the same whether its features come from ``encode`` (what a
    trainer computes) or are handed back as stored, and the null condition changes the output."""
    from pipeline.models.build import build_autoencoder, build_clip

    config = load_config("tiny", overrides=[TOY])
    model, clip, vae = build_denoiser(config, "base").eval(), build_clip(config.clip), build_autoencoder(config.vae)
    conditioning = model.conditioning
    pixels = torch.rand(2, 3, 4, config.stages.base.height, config.stages.base.width) * 2 - 1
    fps = torch.tensor([4, 8])
    with torch.no_grad():
        latents, features = conditioning.encode(clip, vae, pixels, ["a red car", "snow"])
        stored = {"latents": [latents.numpy()], **{k: [v.numpy()] for k, v in features.items()}}
        again = conditioning.batch(*conditioning.from_stored(stored, torch.device("cpu")), fps, torch.float32)
        batch = conditioning.batch(latents, features, fps, torch.float32)
        for name, value in batch.conditions.items():
            torch.testing.assert_close(value, again.conditions[name])
        t = torch.tensor([500, 500])
        kept = model(latents, t, keep_condition=torch.tensor([True, True]), **batch.conditions)
        dropped = model(latents, t, keep_condition=torch.tensor([False, False]), **batch.conditions)
    assert not torch.allclose(kept, dropped)


def test_model_info_counts_a_third_architecture() -> None:
    from pipeline.model_info import stage_info

    info = stage_info(load_config("tiny", overrides=[TOY]), "base")
    assert info.trainable > 0 and info.forward_flops > 0
    assert set(info.frozen) == {"clip_image", "clip_text", "vae"}  # it reads both CLIP features


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.mark.slow
def test_a_third_architecture_encodes_trains_and_generates(tiny_curated, tmp_path) -> None:
    """``i2vgen encode``, ``train`` (on the stored encodings), ``export`` and ``generate``
    with ``model.arch`` naming the toy: the system reaches it only through its conditioning."""
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_curated, data)
    config = ["--preset", "tiny", "--set", TOY, "--set", "encode.dtype=float32"]
    proc = _cli("encode", str(data), "--stage", "base", "--quiet", *config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import lance

    # One source video's rows held out (a column both tables have): the validation clips.
    held_out = lance.dataset(str(data / "clips.lance")).to_table(columns=["source"]).column(0)[0].as_py()
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(run), "--workers", "1",
                "--max-steps", "3", "--checkpoint-every", "3", "--val-where", f"source = '{held_out}'", *config,
                "--set", "train.encoded=require", "--set", "train.log_every=1", "--set", "train.validate_every=3",
                "--set", "train.validation_clips=1", "--set", "train.validation_sampling_steps=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["pre_encoded"] == 1 for r in steps)
    assert all(np.isfinite(r["loss"]) for r in steps)
    assert any("validation_loss" in r for r in rows)  # the validation loss ran on the toy too
    export = tmp_path / "toy.safetensors"
    assert _cli("export", str(run), "--out", str(export)).returncode == 0
    image = tmp_path / "input.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((96, 160, 3)) * 255).astype(np.uint8)).save(image)
    video = tmp_path / "out.mp4"
    proc = _cli("generate", "--image", str(image), "--prompt", "a toy", "--base", str(export), "--steps", "2",
                "--out", str(video), *config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import av

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    stage = load_config("tiny").stages.base
    assert len(frames) == stage.frames and frames[0].shape == (stage.height, stage.width, 3)
