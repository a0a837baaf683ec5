"""The schema's marks decide which keys an exported stage, a resumed run and an encoded table
are checked against; these pin them to the keys the hand-kept lists compared before."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.config.loader import config_to_dict
from pipeline.config.marks import defining_keys, flatten
from pipeline.config.schema import (
    DEFINES, ClipConfig, Config, DiffusionConfig, GlobalEncoderConfig, ModelConfig, StageConfig, UNetConfig, VAEConfig,
)
from pipeline.models.stage_file import check_compatible, load_stage, save_stage
from pipeline.models.weights import WeightsError
from training import job
from training.encodings import first_difference, fingerprint

SECTIONS = ("model", "unet", "global_encoder", "clip", "vae", "diffusion")
NOT_EXPORTED = {"unet.gradient_checkpointing", "unet.temporal_dropout", "diffusion.offset_noise", "clip.weights",
                "vae.weights"}


def _keys(config: Config, *prefixes: str) -> set[str]:
    return {key for key in flatten(config_to_dict(config)) if key.startswith(prefixes)}


@pytest.mark.parametrize("stage", ["base", "refiner"])
def test_the_marks_cover_exactly_the_keys_each_check_compared(stage: str) -> None:
    config = load_config("paper")
    sections = _keys(config, *(f"{s}." for s in SECTIONS))
    assert set(defining_keys(config, ("model", "objective"), stage)) == sections | _keys(config, f"stages.{stage}.")
    assert set(defining_keys(config, ("model", "objective"), stage, for_export=True)) == sections - NOT_EXPORTED
    encoding = _keys(config, "vae.", "clip.") | {f"stages.{stage}.width", f"stages.{stage}.height",
                                                 "encode.grid_fps", "encode.dtype"}
    assert set(defining_keys(config, "encoding", stage)) == encoding


@pytest.mark.parametrize("section", [ModelConfig, UNetConfig, GlobalEncoderConfig, ClipConfig, VAEConfig,
                                     DiffusionConfig, StageConfig])
def test_every_field_of_a_model_or_objective_section_is_marked(section: type) -> None:
    """A field added to one of these sections must say what it defines (or be moved out)."""
    for spec in fields(section):
        assert spec.metadata.get(DEFINES, set()) & {"model", "objective"}, f"{section.__name__}.{spec.name} is not marked"
        if section in (ClipConfig, VAEConfig):  # the encoders' every setting changes what they store
            assert "encoding" in spec.metadata[DEFINES], f"{section.__name__}.{spec.name} is not marked as encoding"


def test_an_unmarked_key_defines_nothing(tiny) -> None:
    changed = load_config("tiny", overrides=["unet.temporal_dropout=0.0", "train.max_steps=9", "sampling.steps=3"])
    for kinds in ("model", "objective", "encoding"):
        assert defining_keys(changed, kinds, "base") == defining_keys(tiny, kinds, "base")
    check_compatible(config_to_dict(tiny), "base", changed, "file")


def test_a_stage_file_is_checked_on_its_exported_keys(tiny, tmp_path) -> None:
    path = save_stage({"x": torch.zeros(1)}, tmp_path / "base.safetensors", "base", tiny, step=0)
    changed = load_config("tiny", overrides=["unet.temporal_dropout=0.0", "diffusion.prediction=epsilon"])
    with pytest.raises(WeightsError, match=r"diffusion\.prediction is 'sample' in the file but 'epsilon' in this config "
                                           r"\(it was trained with preset 'tiny'\)"):
        load_stage(path, "base", changed)
    file_config = config_to_dict(tiny)
    with pytest.raises(WeightsError, match=r"unet\.head_dim is"):
        check_compatible(file_config, "base", load_config("tiny", overrides=["unet.head_dim=4"]), "file")
    # run-only keys and the stage's training sizes are not checked; keys the file predates count as equal
    check_compatible(file_config, "base", load_config(
        "tiny", overrides=["unet.gradient_checkpointing=true", "vae.weights=elsewhere", "stages.base.frames=4"]), "file")
    del file_config["unet"]["head_dim"]
    check_compatible(file_config, "base", tiny, "file")


def _resume(tmp_path: Path, monkeypatch, stage: str, trained, now) -> None:
    """check_resume_config on a run folder whose checkpoint is ``trained``'s (Ray not involved)."""
    (tmp_path / job.CONFIG_FILE).write_text(yaml.safe_dump({"stage": stage, **config_to_dict(trained)}))
    monkeypatch.setattr(job, "latest_checkpoint", lambda run: tmp_path)
    monkeypatch.setattr(job, "checkpoint_step", lambda folder: 4)
    job.check_resume_config(tmp_path, "base", now, allow_change=False)


@pytest.mark.parametrize("override, key", [
    ("diffusion.prediction=epsilon", "diffusion.prediction"), ("stages.base.frames=4", "stages.base.frames"),
    ("unet.gradient_checkpointing=true", "unet.gradient_checkpointing"), ("vae.weights=elsewhere", "vae.weights"),
])
def test_a_resume_refuses_a_changed_marked_key(override: str, key: str, tiny, tmp_path, monkeypatch) -> None:
    changed = load_config("tiny", overrides=["unet.temporal_dropout=0.0", override])
    with pytest.raises(ConfigError, match=rf"^{key}: the run .* \(1 model or objective keys differ\)"):
        _resume(tmp_path, monkeypatch, "base", tiny, changed)


def test_a_resume_keeps_the_stage_and_ignores_the_other_stage_and_unmarked_keys(tiny, tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"^stage: the run .* 'refiner', this command sets 'base'"):
        _resume(tmp_path, monkeypatch, "refiner", tiny, tiny)
    changed = load_config("tiny", overrides=["unet.temporal_dropout=0.0", "stages.refiner.frames=4", "train.max_steps=9",
                                             "encode.dtype=float32"])
    _resume(tmp_path, monkeypatch, "base", tiny, changed)


@pytest.mark.parametrize("stage", ["base", "refiner"])
def test_the_fingerprint_keeps_the_shape_that_tables_store(stage: str, tmp_path) -> None:
    weights = tmp_path / "vae.safetensors"
    weights.write_bytes(b"12345")
    config = load_config("tiny", overrides=[f"vae.weights={weights}"])
    size = getattr(config.stages, stage)
    features = {key: fingerprint(config, stage)[key] for key in ("image_embeds", "text")}  # the denoiser's, not the config's
    stored = json.loads(json.dumps({  # what the first encoded tables carry
        "stage": stage, "width": size.width, "height": size.height,
        "vae": {**config_to_dict(config)["vae"], "weights": {"path": str(weights), "bytes": 5}},
        "clip": {**config_to_dict(config)["clip"], "weights": None},
        **features, "grid_fps": config.encode.grid_fps, "dtype": config.encode.dtype,
    }))
    assert fingerprint(config, stage) == stored and first_difference(stored, fingerprint(config, stage)) is None
    retrained = load_config("tiny", overrides=[f"vae.weights={weights}", "train.max_steps=9", "diffusion.prediction=epsilon"])
    assert fingerprint(retrained, stage) == stored
    grid = load_config("tiny", overrides=[f"vae.weights={weights}", "encode.grid_fps=32"])
    assert first_difference(stored, fingerprint(grid, stage)) == "grid_fps: encoded with 16, this config has 32"
