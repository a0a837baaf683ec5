"""Configs: presets resolve, overrides apply, and every error names its key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.config import ConfigError, load_config, preset_names


def test_presets_resolve_with_the_paper_numbers() -> None:
    assert {"tiny", "paper"} <= set(preset_names())
    paper = load_config("paper")
    assert paper.unet.block_out_channels == [320, 640, 1280, 1280]
    assert (paper.stages.base.width, paper.stages.base.height) == (448, 256)
    assert (paper.stages.refiner.width, paper.stages.refiner.height) == (1280, 720)
    assert paper.stages.refiner.max_timestep == 600
    assert paper.diffusion.prediction == "v" and paper.diffusion.offset_noise == 0.1
    assert paper.global_encoder.stage_channels == [256, 512, 512, 1024]


def test_overrides_and_files_apply_in_order(tmp_path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"unet": {"head_dim": 8}, "sampling": {"steps": 7}}))
    cfg = load_config("tiny", [extra], ["sampling.steps=3", "stages.base.frames=4", "unet.gradient_checkpointing=true"])
    assert cfg.unet.head_dim == 8  # from the file
    assert cfg.sampling.steps == 3  # --set wins over the file
    assert cfg.stages.base.frames == 4
    assert cfg.unet.gradient_checkpointing is True


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("unet.model_chanels=64", "unet.model_chanels", "unknown key"),
        ("unet.head_dim=wide", "unet.head_dim", "expected an integer"),
        ("unet.head_dim=true", "unet.head_dim", "expected an integer"),
        ("diffusion.schedule=quadratic", "diffusion.schedule", "not one of"),
        ("unet.block_out_channels=5", "unet.block_out_channels", "expected a list"),
        ("unet.block_out_channels=[32, 60]", "unet.block_out_channels[1]", "divisible"),
        ("unet.in_channels=4", "unet.in_channels", "latent channels"),
        ("unet.block_out_channels=[32, 64]", "unet.block_out_channels[0]", "fewer than unet.in_channels=48"),
        ("train.checkpoint_every=0", "train.checkpoint_every", "at least 1"),
        ("train.log_every=0", "train.log_every", "at least 1"),
        ("train.warmup_steps=-1", "train.warmup_steps", ">= 0"),
        ("encode.chunk_rows=0", "encode.chunk_rows", "at least 1"),
        ("model.arch=release", "vae.kind", "sd VAE"),
        ("stages.refiner.width=230", "stages.refiner.width", "multiple"),
        ("global_encoder.pool_size=16", "global_encoder.pool_size", "2x2"),
        ("unet=3", "unet", "mapping"),
        ("stages.base.condition_dropout=1.5", "stages.base.condition_dropout", "[0, 1]"),
        ("curation.val_fraction=1.0", "curation.val_fraction", "[0, 1)"),
        ("curation.shots.detect_fps=-1", "curation.shots.detect_fps", ">= 0"),
        ("curation.near_duplicates.min_similarity=0", "curation.near_duplicates.min_similarity", "(0, 1]"),
        ("curation.near_duplicates.min_clip_similarity=1.5", "curation.near_duplicates.min_clip_similarity", "(0, 1]"),
        ("serving.job_attempts=0", "serving.job_attempts", "at least 1"),
        ("serving.sync_timeout_s=0", "serving.sync_timeout_s", "positive"),
        ("serving.results_dir=", "serving.results_dir", "folder or a URI"),
    ],
)
def test_errors_name_the_key(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=[override])
    message = str(err.value)
    assert message.startswith(key + ":"), message
    assert words in message


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'head_dim'"):
        load_config("tiny", overrides=["unet.head_dimm=8"])


def test_unknown_preset_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", [tmp_path / "nope.yaml"])


def test_cli_config_show_round_trips() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "show", "paper", "--set", "sampling.steps=20"],
        capture_output=True, text=True, check=True,
    ).stdout
    shown = yaml.safe_load(out)
    assert shown["sampling"]["steps"] == 20
    assert shown["unet"]["cross_attention_dim"] == 1024


def test_cli_config_error_exits_2_and_names_the_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "show", "tiny", "--set", "vae.kind=jpeg"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "vae.kind" in proc.stderr
