"""Where a training run starts: our own export, SD 2.1, or the released I2VGen-XL.

``i2vgen train --init PATH`` takes any of them; which one a path holds is read off it (an
export carries its stage in its metadata; a folder is a diffusers layout; any other file is
an original single-file checkpoint), and each goes to the part of the model it describes.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.build import Denoiser
from pipeline.models.public_checkpoints import (
    init_spatial_from_sd,
    read_i2vgen_diffusers_unet_state,
    read_sd_unet_state,
    read_vgen_i2vgen_state,
)
from pipeline.models.release_denoiser import ReleaseDenoiser
from pipeline.models.stage_file import read_stage_metadata
from pipeline.models.weights import load_into, read_state_dict


def initialise(model: Denoiser, path: str | Path, source: str = "") -> str:
    """Load ``path`` into ``model``; returns one line saying what was loaded.

    - an ``i2vgen export`` file: every weight it has (the refiner starts from the base);
    - for the released architecture: I2VGen-XL's diffusers ``unet/`` folder (or its root) or
      VGen's ``.pth``, into the whole UNet;
    - for the paper's UNet: SD 2.1 (a diffusers folder or an original single file) into the
      spatial layers, the temporal layers staying the identity (paper, Sec. 3.3).
    """
    path = Path(path)
    source = source or f"--init {path}"
    if path.is_file() and path.suffix == ".safetensors" and "stage" in read_stage_metadata(path):
        return _from_export(model, path, source)
    if isinstance(model, ReleaseDenoiser):
        state = read_i2vgen_diffusers_unet_state(path) if path.is_dir() else read_vgen_i2vgen_state(path)
        load_into(model.unet, {k: v.float() for k, v in state.items()}, source)
        return f"{source}: the released I2VGen-XL UNet ({len(state)} tensors)"
    loaded = init_spatial_from_sd(model.unet, read_sd_unet_state(path), source)
    return f"{source}: SD spatial layers ({len(loaded)} tensors); temporal layers start as the identity"


def _from_export(model: Denoiser, path: Path, source: str) -> str:
    """Every UNet weight must fit; the base's global encoder loads when the file has one.

    A base trained with ``model.image_concat`` reads [x_t, image latent] in ``conv_in``; a
    refiner started from it reads x_t alone, so it takes the x_t half of that kernel."""
    state = read_state_dict(path)
    unet = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    wanted = model.unet.conv_in.weight.shape[1]
    if "conv_in.weight" in unet and unet["conv_in.weight"].shape[1] == 2 * wanted:
        unet["conv_in.weight"] = unet["conv_in.weight"][:, :wanted].contiguous()
    load_into(model.unet, unet, source)
    encoder = {k[len("global_encoder."):]: v for k, v in state.items() if k.startswith("global_encoder.")}
    if getattr(model, "global_encoder", None) is not None and encoder:
        load_into(model.global_encoder, encoder, source)
    return f"{source}: exported {read_stage_metadata(path)['stage']} stage"
