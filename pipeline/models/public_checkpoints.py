"""Readers for the public checkpoints I2VGen-XL builds on, all returned in diffusers' names.

- SD 2.1's UNet and VAE: a diffusers folder, a pipeline root holding ``unet/`` or ``vae/``,
  or an original single file (``model.diffusion_model.*`` / ``first_stage_model.*`` keys).
- I2VGen-XL's UNet: VGen's ``i2vgen_xl_00854500.pth`` or the diffusers ``unet/`` folder of
  ``ali-vilab/i2vgen-xl``.

Every file goes through ``read_state_dict`` (safetensors, or torch with ``weights_only``).
Original layouts are renamed module by module, with the prefix map read off the key names
alone (where the downsamplers sit, what each block holds), so no architecture config is
needed. A key that no rule covers is an error rather than silently dropped: a checkpoint of
an unexpected architecture fails here, naming its first unconverted key.

VGen's key names come from ``ali-vilab/VGen``: ``tools/modules/unet/unet_i2vgen.py``
(``UNetSD_I2VGen``) and ``tools/modules/unet/util.py`` (``ResBlock`` with its ``temopral_conv``,
``TemporalTransformer``, ``TransformerV2``); the module correspondence is the one of
diffusers' ``scripts/convert_i2vgen_to_diffusers.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch

from pipeline.models.unet3d import UNet3D
from pipeline.models.weights import WeightsError, load_into, read_state_dict

SD_UNET_PREFIX = "model.diffusion_model."
SD_VAE_PREFIX = "first_stage_model."
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_I2VGEN_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)
# What init_spatial_from_sd leaves alone: it has no counterpart in a 2D SD UNet.
_NOT_IN_SD = ("temp_convs", "temp_attentions", "transformer_in", "fps_embedding")

_RESNET_LEAVES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VAE_ATTENTION_LEAVES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# VGen's modules that SD's UNet lacks (the fused to_qkv is split after renaming).
_VGEN_EXTRAS = {
    "input_blocks.0.1": "transformer_in",
    "fps_embedding": "fps_embedding",
    "context_embedding": "context_embedding",
    "local_image_concat": "image_latents_proj_in",
    "local_image_embedding": "image_latents_context_embedding",
    "local_temporal_encoder.layers.0.0.norm": "image_latents_temporal_encoder.norm1",
    "local_temporal_encoder.layers.0.0.fn.to_qkv": "image_latents_temporal_encoder.attn1.to_qkv",
    "local_temporal_encoder.layers.0.0.fn.to_out": "image_latents_temporal_encoder.attn1.to_out",
    "local_temporal_encoder.layers.0.1.net.0.0": "image_latents_temporal_encoder.ff.net.0.proj",
    "local_temporal_encoder.layers.0.1.net.2": "image_latents_temporal_encoder.ff.net.2",
}


# --- public readers --------------------------------------------------------------------


def read_sd_unet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """SD's 2D UNet weights in diffusers' ``UNet2DConditionModel`` names.

    ``path`` is a diffusers ``unet/`` folder, a pipeline root holding one, or an original
    ``.safetensors``/``.ckpt``. Conv 1x1 ``proj_in``/``proj_out`` weights (SD 1.x) come back
    as linear ones, the form SD 2.1 and our ``UNet3D`` use.
    """
    path = Path(path)
    if path.is_dir():
        state = _diffusers_weights(path, "unet", _WEIGHTS)
    else:
        ldm = _strip_prefix(read_state_dict(path), SD_UNET_PREFIX, path, "an original SD checkpoint")
        state = _rename(ldm, _ldm_unet_prefixes(ldm), path)
    return _squeeze_1x1(state, ("proj_in.weight", "proj_out.weight"))


def read_sd_vae_state(path: str | Path) -> dict[str, torch.Tensor]:
    """SD's ``AutoencoderKL`` weights in diffusers' names.

    ``path`` is a diffusers ``vae/`` folder, a pipeline root holding one, a full SD single
    file (``first_stage_model.*`` keys, e.g. ``v2-1_512-ema-pruned.ckpt``, which VGen takes
    its VAE from) or a bare original VAE file (``encoder.down.0.block.0.conv1.weight`` ...).
    """
    path = Path(path)
    if path.is_dir():
        return _diffusers_weights(path, "vae", _WEIGHTS)
    state = read_state_dict(path)
    if any(k.startswith(SD_VAE_PREFIX) for k in state):
        state = _strip_prefix(state, SD_VAE_PREFIX, path, "an SD checkpoint")
    elif "encoder.conv_in.weight" not in state:
        raise WeightsError(
            f"{path}: neither '{SD_VAE_PREFIX}*' keys nor a bare VAE's 'encoder.conv_in.weight': "
            "not an SD VAE checkpoint"
        )
    vae = _rename(state, _ldm_vae_prefixes(state), path)
    return _squeeze_1x1(vae, ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))


def read_vgen_i2vgen_state(path: str | Path) -> dict[str, torch.Tensor]:
    """VGen's released I2VGen-XL UNet (``i2vgen_xl_00854500.pth``) in ``I2VGenXLUNet`` names.

    Besides renaming, three tensor changes make diffusers' module compute VGen's function:
    the temporal transformers' Conv1d k=1 ``proj_in``/``proj_out`` become linear weights; the
    local temporal encoder's fused ``to_qkv`` splits into ``to_q``/``to_k``/``to_v``; and
    ``conv_in.weight[:, 4:8]`` is **doubled**. VGen adds the concat-path encoder output to
    its (zero) concat tensor twice (``concat += _ximg`` two times, "a bug, but it doesn't
    matter"), so its conv_in sees 2x the encoder output where diffusers' sees it once;
    conv_in is linear in its input, so doubling those input channels' weights is exact.
    (diffusers' own conversion script copies conv_in unchanged.)
    """
    path = Path(path)
    vgen = read_state_dict(path)
    state = _rename(vgen, {**_ldm_unet_prefixes(vgen), **_VGEN_EXTRAS}, path)
    state = _split_fused_qkv(_squeeze_1x1(state, ("proj_in.weight", "proj_out.weight")))
    return _double_concat_inputs(state, path)


def read_i2vgen_diffusers_unet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``unet/`` of diffusers' ``ali-vilab/i2vgen-xl`` (``path`` is that folder or its root).

    Prefers the fp32 safetensors, then the ``.fp16`` variant (returned in fp16), then
    ``.bin``. Returned as stored: these weights compute diffusers' single-concat function
    (see ``read_vgen_i2vgen_state``).
    """
    return _diffusers_weights(Path(path), "unet", _I2VGEN_WEIGHTS)


def init_spatial_from_sd(
    unet: UNet3D, state: Mapping[str, torch.Tensor], source: str = "SD UNet state"
) -> list[str]:
    """Load SD's 2D UNet ``state`` (diffusers names) into ``unet``'s spatial layers.

    The temporal layers and the FPS embedding keep their values: at their identity init the
    3D UNet then computes SD's 2D UNet on every frame, the starting point the paper trains
    from. The fit is strict both ways (every SD key has a same-shaped UNet key and every
    spatial UNet key is in ``state``), so a partly loaded UNet cannot pass unnoticed.
    Returns the keys loaded.
    """
    stray = [k for k in state if _not_in_sd(k)]
    if stray:
        raise WeightsError(f"{source}: {len(stray)} temporal or fps keys in a 2D SD state, first {stray[0]!r}")
    kept = {k: v for k, v in unet.state_dict().items() if _not_in_sd(k)}
    load_into(unet, {**state, **kept}, source)
    return list(state)


# --- files ---------------------------------------------------------------------------


def _diffusers_weights(path: Path, subfolder: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The first of ``names`` in a diffusers model folder, given the folder or the root above it."""
    folder = path / subfolder if (path / subfolder).is_dir() else path
    for name in names:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise WeightsError(f"{folder}: no diffusers weights file (looked for {', '.join(names)})")


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str, path: Path, what: str) -> dict[str, torch.Tensor]:
    """The keys under ``prefix`` with it removed: a single SD file holds all its models."""
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not inner:
        raise WeightsError(f"{path}: no '{prefix}*' keys: not {what}")
    return inner


def _not_in_sd(key: str) -> bool:
    return any(part in _NOT_IN_SD for part in key.split("."))


# --- renaming ------------------------------------------------------------------------


def _rename(state: Mapping[str, torch.Tensor], prefixes: Mapping[str, str], source: Path) -> dict[str, torch.Tensor]:
    """Rename every key by its longest module prefix in ``prefixes``; none may be left over."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            target = prefixes.get(".".join(parts[:n]))
            if target is not None:
                out[".".join([target, *parts[n:]])] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} keys of an unknown layout, first {unknown[0]!r}")
    return out


def _children(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """The numeric module indices directly under ``prefix``, in order."""
    depth = prefix.count(".") + 1
    found = {k.split(".")[depth] for k in state if k.startswith(prefix + ".")}
    return sorted(int(i) for i in found if i.isdigit())


def _ldm_unet_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """LDM module prefix -> diffusers module prefix, for SD's ``UNetModel`` and VGen's UNet.

    Both number their blocks flatly (``input_blocks.N.M``). A downsampler (``op``) closes a
    level on the way down, and each level on the way up has one block more than the levels
    on the way down have ResBlocks.
    """
    prefixes = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    layers_per_block = _add_input_blocks(state, prefixes)
    _add_parts(state, "middle_block", "mid_block", 0, prefixes)
    for i in _children(state, "output_blocks"):
        level, layer = divmod(i, layers_per_block + 1)
        _add_parts(state, f"output_blocks.{i}", f"up_blocks.{level}", layer, prefixes)
    return prefixes


def _add_input_blocks(state: Mapping[str, torch.Tensor], prefixes: dict[str, str]) -> int:
    """Map ``input_blocks`` 1..N; returns the ResBlocks per level (the last level's count)."""
    level, layer = 0, 0
    for i in _children(state, "input_blocks")[1:]:
        block = f"input_blocks.{i}"
        # SD wraps its downsampler in a sequential (``.0.op``), VGen does not (``.op``)
        down = [p for p in (f"{block}.op", f"{block}.0.op") if f"{p}.weight" in state]
        if down:
            prefixes[down[0]] = f"down_blocks.{level}.downsamplers.0.conv"
            level, layer = level + 1, 0
        else:
            _add_parts(state, block, f"down_blocks.{level}", layer, prefixes)
            layer += 1
    return layer


def _add_parts(
    state: Mapping[str, torch.Tensor], block: str, target: str, index: int, prefixes: dict[str, str]
) -> None:
    """Map the modules of one LDM block: ResBlocks, an upsampler, and transformers.

    Transformers come in build order: the spatial one first, then (VGen) the temporal one.
    ResBlocks are numbered from ``index`` on (the middle block has two), transformers get
    ``index``.
    """
    resnets, transformers = index, ["attentions", "temp_attentions"]
    for part in _children(state, block):
        source = f"{block}.{part}"
        if f"{source}.in_layers.0.weight" in state:
            _add_resnet(source, f"{target}.resnets.{resnets}", f"{target}.temp_convs.{resnets}", prefixes)
            resnets += 1
        elif f"{source}.conv.weight" in state:
            prefixes[f"{source}.conv"] = f"{target}.upsamplers.0.conv"
        elif transformers:
            prefixes[source] = f"{target}.{transformers.pop(0)}.{index}"


def _add_resnet(source: str, target: str, temporal: str, prefixes: dict[str, str]) -> None:
    """A ResBlock; VGen's holds its temporal convolution as ``temopral_conv`` (sic)."""
    for old, new in _RESNET_LEAVES.items():
        prefixes[f"{source}.{old}"] = f"{target}.{new}"
    prefixes[f"{source}.temopral_conv"] = temporal


def _ldm_vae_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """LDM ``AutoencoderKL`` module prefix -> diffusers one.

    The original decoder numbers its levels from the output end (``up.0`` is the last level
    run), diffusers from the input end.
    """
    prefixes = {name: name for name in ("quant_conv", "post_quant_conv")}
    for part in ("encoder", "decoder"):
        prefixes.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out"})
        prefixes[f"{part}.norm_out"] = f"{part}.conv_norm_out"
        for i in (1, 2):
            _add_vae_resnet(f"{part}.mid.block_{i}", f"{part}.mid_block.resnets.{i - 1}", prefixes)
        for old, new in _VAE_ATTENTION_LEAVES.items():
            prefixes[f"{part}.mid.attn_1.{old}"] = f"{part}.mid_block.attentions.0.{new}"
    for i in _children(state, "encoder.down"):
        target = f"encoder.down_blocks.{i}"
        for j in _children(state, f"encoder.down.{i}.block"):
            _add_vae_resnet(f"encoder.down.{i}.block.{j}", f"{target}.resnets.{j}", prefixes)
        prefixes[f"encoder.down.{i}.downsample.conv"] = f"{target}.downsamplers.0.conv"
    up = _children(state, "decoder.up")
    for i in up:
        target = f"decoder.up_blocks.{len(up) - 1 - i}"
        for j in _children(state, f"decoder.up.{i}.block"):
            _add_vae_resnet(f"decoder.up.{i}.block.{j}", f"{target}.resnets.{j}", prefixes)
        prefixes[f"decoder.up.{i}.upsample.conv"] = f"{target}.upsamplers.0.conv"
    return prefixes


def _add_vae_resnet(source: str, target: str, prefixes: dict[str, str]) -> None:
    prefixes[source] = target
    prefixes[f"{source}.nin_shortcut"] = f"{target}.conv_shortcut"


# --- tensor changes ------------------------------------------------------------------


def _squeeze_1x1(state: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Conv weights of kernel size 1 under ``suffixes`` -> the equal linear weights."""
    for key, value in state.items():
        if key.endswith(suffixes) and value.ndim > 2 and all(s == 1 for s in value.shape[2:]):
            state[key] = value.reshape(value.shape[:2])
    return state


def _split_fused_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``to_qkv`` (q, k, v stacked on the output axis, as VGen's ``chunk(3, -1)`` reads them)."""
    for key in [k for k in state if k.endswith(".to_qkv.weight")]:
        base = key[: -len("to_qkv.weight")]
        for name, part in zip(("to_q", "to_k", "to_v"), state.pop(key).chunk(3, dim=0)):
            state[f"{base}{name}.weight"] = part.clone()
    return state


def _double_concat_inputs(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Double conv_in's weights on the concat-path channels (the second half of its inputs)."""
    if "conv_in.weight" not in state:
        raise WeightsError(f"{path}: no 'input_blocks.0.0.weight' (conv_in): not a VGen I2VGen-XL checkpoint")
    weight = state["conv_in.weight"].clone()
    weight[:, weight.shape[1] // 2 :] *= 2
    state["conv_in.weight"] = weight
    return state
