"""``i2vgen weights check DIR``: which public weights a folder holds and whether they fit.

Users download weights by hand onto clusters that cannot reach the hub, and a missing
subfolder or a checkpoint of another size otherwise surfaces as a shape error deep inside a
training job. This reads the folder against the layouts we load (the released I2VGen-XL in
VGen's and diffusers' layouts, SD 2.1 in both, the LAION aesthetic predictor), names every
expected file as present or missing, and fits each weight file's tensors to the shapes the
chosen preset builds (on the meta device: nothing is allocated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from pipeline.config.schema import Config
from pipeline.models.public_checkpoints import (
    read_i2vgen_diffusers_unet_state,
    read_sd_unet_state,
    read_sd_vae_state,
    read_vgen_i2vgen_state,
)
from pipeline.models.weights import WeightsError, fit_problems, read_state_dict

Shapes = Mapping[str, torch.Tensor]


def _release_unet(config: Config) -> Shapes:
    from diffusers import I2VGenXLUNet

    from pipeline.models.release_denoiser import release_unet_kwargs

    with torch.device("meta"):
        return I2VGenXLUNet(**release_unet_kwargs(config.unet)).state_dict()


def _sd_spatial(config: Config) -> Shapes:
    from pipeline.models.parts import parameter_part
    from pipeline.models.unet3d import UNet3D

    with torch.device("meta"):
        state = UNet3D(config.unet).state_dict()
    return {k: v for k, v in state.items() if parameter_part(k) == "spatial"}


def _sd_vae(config: Config) -> Shapes:
    from dataclasses import replace

    from pipeline.models.vae import SDAutoencoder

    return SDAutoencoder(replace(config.vae, weights=None), device="meta").model.state_dict()


def _open_clip(config: Config) -> Shapes:
    import open_clip

    from pipeline.models.clip import clip_model_config

    arch = "ViT-H-14" if config.clip.arch == "hf" else config.clip.arch
    with torch.device("meta"):
        return open_clip.CLIP(**clip_model_config(arch)).state_dict()


def _aesthetic_head(config: Config) -> Shapes:
    from pipeline.models.aesthetic_head import LaionAestheticHead

    with torch.device("meta"):
        return LaionAestheticHead().state_dict()


@dataclass(frozen=True)
class Part:
    """One expected file or folder (``name/``) of a layout, and how to fit its tensors."""

    path: str
    role: str
    expected: Optional[Callable[[Config], Shapes]] = None
    read: Optional[Callable[[Path], Shapes]] = None


_HF = [
    Part("text_encoder/", "CLIP text encoder (clip.arch=hf, clip.weights=DIR)"),
    Part("image_encoder/", "CLIP image encoder (clip.arch=hf)"),
    Part("tokenizer/", "CLIP tokenizer (clip.arch=hf)"),
    Part("feature_extractor/", "CLIP image preprocessing"),
    Part("scheduler/", "scheduler config"),
]
LAYOUTS: dict[str, list[Part]] = {
    "I2VGen-XL, diffusers layout": [
        Part("model_index.json", "pipeline index"),
        Part("unet/", "release UNet (model.arch=release)", _release_unet, read_i2vgen_diffusers_unet_state),
        Part("vae/", "SD VAE (vae.weights=DIR/vae)", _sd_vae, read_sd_vae_state),
        *_HF,
    ],
    "I2VGen-XL, VGen layout": [
        Part("i2vgen_xl_00854500.pth", "release UNet (model.arch=release)", _release_unet, read_vgen_i2vgen_state),
        Part("open_clip_pytorch_model.bin", "open_clip ViT-H/14 (clip.weights)", _open_clip, read_state_dict),
        Part("v2-1_512-ema-pruned.ckpt", "SD 2.1, for its VAE (vae.weights)", _sd_vae, read_sd_vae_state),
    ],
    "Stable Diffusion 2.1, diffusers layout": [
        Part("model_index.json", "pipeline index"),
        Part("unet/", "SD UNet: the paper UNet's spatial layers (train --init DIR)", _sd_spatial, read_sd_unet_state),
        Part("vae/", "SD VAE (vae.weights=DIR/vae)", _sd_vae, read_sd_vae_state),
    ],
    "Stable Diffusion 2.1, single file": [
        Part("v2-1_512-ema-pruned.ckpt", "SD UNet: spatial layers (train --init FILE)", _sd_spatial, read_sd_unet_state),
        Part("v2-1_512-ema-pruned.ckpt", "SD VAE (vae.weights=FILE)", _sd_vae, read_sd_vae_state),
    ],
    "LAION aesthetic predictor": [
        Part("sac+logos+ava1-l14-linearMSE.pth", "aesthetic head (curation aesthetic weights)", _aesthetic_head,
             read_state_dict),
    ],
}


@dataclass
class PartReport:
    part: Part
    status: str  # "ok", "missing", "mismatch", "unreadable" or "present" (nothing to fit)
    detail: str = ""


def _exists(root: Path, part: Part) -> bool:
    target = root / part.path.rstrip("/")
    return target.is_dir() if part.path.endswith("/") else target.is_file()


def detect_layout(root: Path) -> str:
    """The layout whose parts the folder holds most of; ``model_index.json`` breaks ties."""
    index = root / "model_index.json"
    pipeline_class = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    scores = {name: sum(_exists(root, p) for p in parts) for name, parts in LAYOUTS.items()}
    if pipeline_class.startswith("I2VGenXL"):
        scores["I2VGen-XL, diffusers layout"] += 1
    elif pipeline_class.startswith("StableDiffusion"):
        scores["Stable Diffusion 2.1, diffusers layout"] += 1
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        known = sorted({p.path for parts in LAYOUTS.values() for p in parts})
        raise WeightsError(f"{root}: holds none of the files we load ({', '.join(known)})")
    return best


def check_folder(root: str | Path, config: Config, layout: Optional[str] = None) -> tuple[str, list[PartReport]]:
    """Each part of the folder's layout: present or missing, and whether its tensors fit."""
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"{root}: not a folder")
    layout = layout or detect_layout(root)
    reports = []
    for part in LAYOUTS[layout]:
        if not _exists(root, part):
            reports.append(PartReport(part, "missing"))
        elif part.read is None:
            reports.append(PartReport(part, "present"))
        else:
            reports.append(_fit(root, part, config))
    return layout, reports


def _fit(root: Path, part: Part, config: Config) -> PartReport:
    try:
        state = part.read(root / part.path.rstrip("/"))
    except WeightsError as err:
        return PartReport(part, "unreadable", str(err))
    problems = fit_problems(part.expected(config), state)
    if problems:
        return PartReport(part, "mismatch", "; ".join(problems))
    return PartReport(part, "ok", f"{len(state)} tensors fit preset {config.preset!r}")


def format_report(root: str | Path, layout: str, reports: list[PartReport]) -> str:
    width = max(len(r.part.path) for r in reports)
    lines = [f"{root}: {layout}"]
    for r in reports:
        detail = f" ({r.detail})" if r.detail else ""
        lines.append(f"  {r.status.upper():<10} {r.part.path:<{width}}  {r.part.role}{detail}")
    return "\n".join(lines)
