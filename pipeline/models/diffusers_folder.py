"""A trained stage as a diffusers-style folder, beside the single safetensors export.

Users move models between tools by folder: ``unet/`` (``config.json`` plus
``diffusion_pytorch_model.safetensors``) and ``scheduler/``. The released architecture's
``unet/`` is diffusers' own ``I2VGenXLUNet`` folder (``I2VGenXLUNet.from_pretrained`` reads
it); the paper's UNet has no diffusers class (its FPS embedding and global encoder are ours),
so its ``config.json`` names our class and holds our config, with weights under diffusers'
parameter names all the same. The frozen encoders are not written: they are the ones the
model was trained with (copy ``vae/``, ``text_encoder/``, ... from their source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline.config.loader import config_to_dict
from pipeline.config.schema import Config
from pipeline.models.build import Denoiser
from pipeline.models.release_denoiser import ReleaseDenoiser

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_PREDICTION = {"v": "v_prediction", "epsilon": "epsilon", "sample": "sample"}
_BETAS = {"linear_sd": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}


def scheduler_config(config: Config) -> dict[str, Any]:
    """diffusers ``DDIMScheduler`` settings that reproduce our schedule and sampling steps."""
    diffusion, sampling = config.diffusion, config.sampling
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": diffusion.num_train_timesteps,
        "beta_schedule": _BETAS[diffusion.schedule],
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "rescale_betas_zero_snr": diffusion.zero_terminal_snr,
        "prediction_type": _PREDICTION[diffusion.prediction],
        "timestep_spacing": sampling.spacing,
        "steps_offset": sampling.steps_offset,
        "set_alpha_to_one": True,
        "clip_sample": False,
    }


def save_diffusers_folder(model: Denoiser, config: Config, stage: str, out: str | Path) -> Path:
    """Write ``out/unet``, ``out/scheduler`` and, for the paper's base, ``out/global_encoder``."""
    out = Path(out)
    if isinstance(model, ReleaseDenoiser):
        model.unet.save_pretrained(out / "unet", safe_serialization=True)
    else:
        _save_module(out / "unet", model.unet.state_dict(), {
            "_class_name": "UNet3D", "_i2vgen_stage": stage, **config_to_dict(config)["unet"]
        })
        if model.global_encoder is not None:
            _save_module(out / "global_encoder", model.global_encoder.state_dict(), {
                "_class_name": "GlobalEncoder", **config_to_dict(config)["global_encoder"]
            })
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(config), indent=2))
    return out


def _save_module(folder: Path, state: dict, module_config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_NAME))
    (folder / "config.json").write_text(json.dumps(module_config, indent=2))
