"""Tiny diffusers models written in the original public layouts (SD's LDM single file,
VGen's ``.pth``): the inverse of what ``pipeline.models.public_checkpoints`` reads, so tests
can build fixtures with the real key names and shapes."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, I2VGenXLUNet, UNet2DConditionModel

RESNET_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _rename(state: dict, rules: dict[str, str]) -> dict:
    """Rename each key by its longest prefix in ``rules``; every key must be covered."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        n = next(n for n in range(len(parts) - 1, 0, -1) if ".".join(parts[:n]) in rules)
        out[".".join([rules[".".join(parts[:n])], *parts[n:]])] = value
    return out


def _resnet_rules(diffusers: str, ldm: str) -> dict[str, str]:
    return {f"{diffusers}.{new}": f"{ldm}.{old}" for new, old in RESNET_LEAVES.items()}


def _unet_rules(model: torch.nn.Module, vgen: bool) -> dict[str, str]:
    """diffusers -> SD's LDM names or (``vgen``) VGen's, from the module structure."""
    per = model.config.layers_per_block
    rules = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}

    def layer(d: str, j: int, ldm: str) -> None:
        rules.update(_resnet_rules(f"{d}.resnets.{j}", f"{ldm}.0"))
        rules[f"{d}.temp_convs.{j}"] = f"{ldm}.0.temopral_conv"
        rules[f"{d}.attentions.{j}"] = f"{ldm}.1"
        rules[f"{d}.temp_attentions.{j}"] = f"{ldm}.2"

    for b in range(len(model.down_blocks)):
        for j in range(per):
            layer(f"down_blocks.{b}", j, f"input_blocks.{1 + b * (per + 1) + j}")
        op = f"input_blocks.{1 + b * (per + 1) + per}" + (".op" if vgen else ".0.op")
        rules[f"down_blocks.{b}.downsamplers.0.conv"] = op
    for b, block in enumerate(model.up_blocks):
        for j in range(per + 1):
            layer(f"up_blocks.{b}", j, f"output_blocks.{b * (per + 1) + j}")
        index = (3 if vgen else 2) if hasattr(block, "attentions") else 1
        rules[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (per + 1) + per}.{index}.conv"
    last = 3 if vgen else 2
    rules.update(_resnet_rules("mid_block.resnets.0", "middle_block.0"))
    rules.update(_resnet_rules("mid_block.resnets.1", f"middle_block.{last}"))
    rules.update({"mid_block.temp_convs.0": "middle_block.0.temopral_conv",
                  "mid_block.temp_convs.1": f"middle_block.{last}.temopral_conv",
                  "mid_block.attentions.0": "middle_block.1", "mid_block.temp_attentions.0": "middle_block.2"})
    return rules


def to_ldm_unet(model: UNet2DConditionModel) -> dict:
    return {"model.diffusion_model." + k: v for k, v in _rename(model.state_dict(), _unet_rules(model, False)).items()}


def to_vgen(model: I2VGenXLUNet) -> dict:
    """The same weights in VGen's names and shapes; VGen's forward, which adds the concat-path
    encoder output twice, computes with them the original with that output doubled."""
    state = dict(model.state_dict())
    enc = "image_latents_temporal_encoder"
    state[f"{enc}.attn1.to_qkv.weight"] = torch.cat([state.pop(f"{enc}.attn1.to_{p}.weight") for p in "qkv"])
    for key in [k for k in state if k.endswith(("proj_in.weight", "proj_out.weight"))]:
        if "temp_attentions" in key or key.startswith("transformer_in."):  # Conv1d k=1 in VGen
            state[key] = state[key][:, :, None]
    rules = _unet_rules(model, True)
    rules.update({"transformer_in": "input_blocks.0.1", "fps_embedding": "fps_embedding",
                  "context_embedding": "context_embedding", "image_latents_proj_in": "local_image_concat",
                  "image_latents_context_embedding": "local_image_embedding",
                  f"{enc}.norm1": "local_temporal_encoder.layers.0.0.norm",
                  f"{enc}.attn1": "local_temporal_encoder.layers.0.0.fn",
                  f"{enc}.ff.net.0.proj": "local_temporal_encoder.layers.0.1.net.0.0",
                  f"{enc}.ff.net.2": "local_temporal_encoder.layers.0.1.net.2"})
    return _rename(state, rules)


def to_ldm_vae(model: AutoencoderKL) -> dict:
    n = len(model.config.block_out_channels)
    rules = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        rules.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out",
                      f"{part}.conv_norm_out": f"{part}.norm_out"})
        for i in (0, 1):
            rules[f"{part}.mid_block.resnets.{i}"] = f"{part}.mid.block_{i + 1}"
            rules[f"{part}.mid_block.resnets.{i}.conv_shortcut"] = f"{part}.mid.block_{i + 1}.nin_shortcut"
        for new, old in {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}.items():
            rules[f"{part}.mid_block.attentions.0.{new}"] = f"{part}.mid.attn_1.{old}"
    for i in range(n):
        levels = ((f"encoder.down_blocks.{i}", f"encoder.down.{i}"),
                  (f"decoder.up_blocks.{i}", f"decoder.up.{n - 1 - i}"))
        for j in range(model.config.layers_per_block + 1):
            for d, ldm in levels:
                rules[f"{d}.resnets.{j}"] = f"{ldm}.block.{j}"
                rules[f"{d}.resnets.{j}.conv_shortcut"] = f"{ldm}.block.{j}.nin_shortcut"
        rules[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        rules[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    state = _rename(model.state_dict(), rules)
    for key in [k for k in state if ".attn_1." in k and k.endswith("weight") and ".norm." not in k]:
        state[key] = state[key][:, :, None, None]  # 1x1 convs in the original
    return state
