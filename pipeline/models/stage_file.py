"""The exported weights of one stage: a safetensors file that carries its stage and config.

Training writes it (``i2vgen export``); inference and serving read it. The metadata lets a
reader refuse a file that cannot work with its config (a refiner passed as the base, a
UNet of another size, another noise schedule) with the first differing key named, instead
of a wall of shape errors or, worse, a model that loads and produces noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from pipeline.config.loader import config_to_dict
from pipeline.config.marks import defining_keys, flatten
from pipeline.config.schema import Config
from pipeline.models.build import Denoiser, build_denoiser
from pipeline.models.weights import WeightsError, load_into, read_state_dict

def save_stage(state: Mapping[str, torch.Tensor], path: str | Path, stage: str, config: Config, step: int) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"stage": stage, "step": str(step), "config": yaml.safe_dump(config_to_dict(config))}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def read_stage_metadata(path: str | Path) -> dict[str, Any]:
    """The stage, step and config dict a file was exported with (empty for bare files)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    meta: dict[str, Any] = dict(raw)
    if "config" in meta:
        meta["config"] = yaml.safe_load(meta["config"])
    return meta


def check_compatible(file_config: Mapping[str, Any], stage: str, config: Config, source: str) -> None:
    """Raise naming the first key that decides what the stage's weights mean (the schema's
    model and objective keys, less the run-only ones) where the file's config differs from
    ``config``. A key the file predates counts as equal."""
    theirs = flatten(file_config)
    for key, value in defining_keys(config, ("model", "objective"), stage, for_export=True).items():
        if theirs.get(key, value) != value:
            hint = f" (it was trained with preset {file_config.get('preset')!r})" if file_config.get("preset") else ""
            raise WeightsError(f"{source}: {key} is {theirs[key]!r} in the file but {value!r} in this config{hint}")


def load_stage(path: str | Path, stage: str, config: Config, source: str = "") -> Denoiser:
    """The denoiser for ``stage`` with the file's weights, in eval mode."""
    source = source or str(path)
    meta = read_stage_metadata(path)
    if meta.get("stage") and meta["stage"] != stage:
        raise WeightsError(f"{source}: holds the {meta['stage']} stage, not the {stage}")
    if "config" in meta:
        check_compatible(meta["config"], stage, config, source)
    model = build_denoiser(config, stage)
    load_into(model, read_state_dict(path), source=source)
    return model.eval().requires_grad_(False)


def save_untrained_stages(folder: str | Path, config: Config, seed: int = 1) -> dict[str, Path]:
    """Both stages, randomly initialised, exported like trained ones: what benchmarks, tests
    and a first try of the endpoint run when no trained model is at hand. The temporal
    layers, zero at init, get a little noise so every layer takes part."""
    folder = Path(folder)
    paths: dict[str, Path] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for stage in ("base", "refiner"):
            state = build_denoiser(config, stage).state_dict()
            state = {k: v + 0.01 * torch.randn_like(v) if not v.any() else v for k, v in state.items()}
            paths[stage] = save_stage(state, folder / f"{stage}.safetensors", stage, config, step=0)
    return paths
