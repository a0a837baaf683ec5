"""Public checkpoint layouts: tiny random models with the real key names, saved in the real
layouts, load through ``pipeline.models.public_checkpoints`` and compute the same numbers.

The original (LDM / VGen) files are built here by renaming diffusers state dicts the other
way; for SD's UNet and VAE that inverse is itself checked against diffusers' own LDM
converters, so the loaders are checked against an independent reading of the layouts.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, I2VGenXLUNet, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from pipeline.config.schema import UNetConfig
from pipeline.models.public_checkpoints import (
    init_spatial_from_sd,
    read_i2vgen_diffusers_unet_state,
    read_sd_unet_state,
    read_sd_vae_state,
    read_vgen_i2vgen_state,
)
from pipeline.models.unet3d import UNet3D
from pipeline.models.weights import WeightsError, load_into

from checkpoint_layouts import to_ldm_unet, to_ldm_vae, to_vgen

# Three levels and two ResBlocks per level, so that an up level holds attention *and* an
# upsampler (SD: ``output_blocks.N.2.conv``, VGen: ``output_blocks.N.3.conv``).
SD_UNET = UNetConfig(
    in_channels=4, out_channels=4, block_out_channels=[16, 32, 32], attention_levels=[True, True, False],
    layers_per_block=2, head_dim=8, norm_num_groups=8, cross_attention_dim=32, temporal_dropout=0.0,
)
I2VGEN = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8, cross_attention_dim=32,
    attention_head_dim=8,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; two spin badly when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every weight, so that zero-initialised layers take part in the comparison."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _sd_unet() -> UNet2DConditionModel:
    c = SD_UNET
    return _perturbed(UNet2DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=tuple(c.block_out_channels),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
        cross_attention_dim=c.cross_attention_dim, use_linear_projection=True,
        attention_head_dim=tuple(ch // c.head_dim for ch in c.block_out_channels),  # SD 2.1: heads per level
    ))


def _assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_the_ldm_fixtures_agree_with_diffusers_own_converters() -> None:
    unet = _sd_unet()
    config = dict(unet.config)
    _assert_same_state(convert_ldm_unet_checkpoint(to_ldm_unet(unet), config), unet.state_dict())
    vae = _tiny_vae()
    ldm = {"first_stage_model." + k: v for k, v in to_ldm_vae(vae).items()}
    _assert_same_state(convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())


# --- SD UNet -> our UNet3D ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["unet_folder", "pipeline_root_bin", "ldm_safetensors", "ldm_ckpt"])
def test_unet3d_from_sd_computes_the_2d_unet_on_every_frame(tmp_path, layout: str) -> None:
    sd = _sd_unet()
    if layout == "unet_folder":
        sd.save_pretrained(tmp_path / "unet")
        path = tmp_path / "unet"
    elif layout == "pipeline_root_bin":
        sd.save_pretrained(tmp_path / "unet", safe_serialization=False)
        path = tmp_path
    elif layout == "ldm_safetensors":
        save_file({k: v.contiguous() for k, v in to_ldm_unet(sd).items()}, tmp_path / "sd.safetensors")
        path = tmp_path / "sd.safetensors"
    else:
        others = {"first_stage_model.decoder.conv_in.weight": torch.zeros(1), "betas": torch.zeros(3)}
        state = {**to_ldm_unet(sd), **others}  # the rest of an SD file
        torch.save({"state_dict": state, "global_step": 1}, tmp_path / "sd.ckpt")
        path = tmp_path / "sd.ckpt"

    ours = UNet3D(SD_UNET).eval()
    temporal_before = {k: v.clone() for k, v in ours.state_dict().items() if "temp" in k or "transformer_in" in k}
    loaded = init_spatial_from_sd(ours, read_sd_unet_state(path))
    assert sorted(loaded) == sorted(sd.state_dict())
    after = ours.state_dict()
    assert all(torch.equal(after[k], v) for k, v in temporal_before.items())

    x, t, ctx = torch.randn(2, 4, 3, 16, 12), torch.tensor([10, 700]), torch.randn(2, 5, 32)
    with torch.no_grad():
        video = ours(x, t, ctx, fps=torch.tensor([8, 16]))
        frames = torch.stack([sd(x[:, :, f], t, ctx).sample for f in range(x.shape[2])], dim=2)
    assert frames.abs().max() > 1e-2
    torch.testing.assert_close(video, frames, rtol=1e-5, atol=1e-5)


def test_sd1_conv_projections_become_linear(tmp_path) -> None:
    ldm = to_ldm_unet(_sd_unet())
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    linear = ldm[key]
    ldm[key] = linear[:, :, None, None]
    save_file({k: v.contiguous() for k, v in ldm.items()}, tmp_path / "sd1.safetensors")
    state = read_sd_unet_state(tmp_path / "sd1.safetensors")
    assert torch.equal(state["down_blocks.0.attentions.0.proj_in.weight"], linear)


# --- SD VAE ---------------------------------------------------------------------------------


def _tiny_vae() -> AutoencoderKL:
    return _perturbed(AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    ))


@pytest.mark.parametrize("layout", ["sd_ckpt", "bare_safetensors", "pipeline_root"])
def test_sd_vae_from_each_layout_equals_the_original(tmp_path, layout: str) -> None:
    vae = _tiny_vae()
    if layout == "sd_ckpt":
        state = {"first_stage_model." + k: v for k, v in to_ldm_vae(vae).items()}
        state["model.diffusion_model.out.2.weight"] = torch.zeros(1)  # the rest of an SD file
        torch.save({"state_dict": state, "global_step": 1}, tmp_path / "v2-1_512-ema-pruned.ckpt")
        path = tmp_path / "v2-1_512-ema-pruned.ckpt"
    elif layout == "bare_safetensors":
        save_file({k: v.contiguous() for k, v in to_ldm_vae(vae).items()}, tmp_path / "vae.safetensors")
        path = tmp_path / "vae.safetensors"
    else:
        vae.save_pretrained(tmp_path / "vae")
        path = tmp_path
    fresh = AutoencoderKL.from_config(vae.config).eval()
    load_into(fresh, read_sd_vae_state(path), str(path))

    pixels, latents = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(pixels).latent_dist.mean, vae.encode(pixels).latent_dist.mean)
        torch.testing.assert_close(fresh.decode(latents).sample, vae.decode(latents).sample)


# --- I2VGen-XL UNet -------------------------------------------------------------------------


def _i2vgen_inputs() -> dict:
    b, f = 1, 3
    return dict(sample=torch.randn(b, 4, f, 8, 8), timestep=torch.tensor([500]), fps=torch.tensor([16]),
                image_latents=torch.randn(b, 4, f, 8, 8), image_embeddings=torch.randn(b, 1, 32),
                encoder_hidden_states=torch.randn(b, 5, 32), return_dict=False)


def test_vgen_checkpoint_loads_into_diffusers_i2vgen_with_vgens_double_concat(tmp_path) -> None:
    original = _perturbed(I2VGenXLUNet(**I2VGEN))
    vgen = to_vgen(original)
    # a few names exactly as VGen's UNetSD_I2VGen / util.py build them
    for key, ndim in (("input_blocks.0.1.proj_in.weight", 3), ("input_blocks.3.op.weight", 4),
                      ("input_blocks.1.0.temopral_conv.conv4.3.weight", 5), ("middle_block.3.in_layers.0.weight", 1),
                      ("output_blocks.5.3.conv.weight", 4), ("output_blocks.2.1.conv.weight", 4),
                      ("output_blocks.8.2.proj_out.weight", 3), ("output_blocks.8.1.proj_out.weight", 2),
                      ("local_temporal_encoder.layers.0.0.fn.to_qkv.weight", 2)):
        assert vgen[key].ndim == ndim, key
    torch.save({"state_dict": vgen, "step": 854500}, tmp_path / "i2vgen_xl_00854500.pth")

    state = read_vgen_i2vgen_state(tmp_path / "i2vgen_xl_00854500.pth")
    want = original.state_dict()
    assert sorted(state) == sorted(want)
    for k, v in want.items():
        if k != "conv_in.weight":
            assert torch.equal(state[k], v), k
    torch.testing.assert_close(state["conv_in.weight"][:, :4], want["conv_in.weight"][:, :4])
    torch.testing.assert_close(state["conv_in.weight"][:, 4:8], 2 * want["conv_in.weight"][:, 4:8])

    loaded = I2VGenXLUNet(**I2VGEN).eval()
    load_into(loaded, state, "vgen")
    inputs = _i2vgen_inputs()
    with torch.no_grad():
        diffusers_once = original(**inputs)[0]
        hook = original.image_latents_temporal_encoder.register_forward_hook(lambda m, i, out: 2 * out)
        vgen_twice = original(**inputs)[0]  # VGen: concat += _ximg; concat += _ximg
        hook.remove()
        got = loaded(**inputs)[0]
    torch.testing.assert_close(got, vgen_twice, rtol=1e-5, atol=1e-5)
    assert (got - diffusers_once).abs().max() > 1e-3


def test_i2vgen_diffusers_layouts_round_trip(tmp_path) -> None:
    original = _perturbed(I2VGenXLUNet(**I2VGEN))
    want = original.state_dict()
    original.save_pretrained(tmp_path / "root" / "unet")
    _assert_same_state(read_i2vgen_diffusers_unet_state(tmp_path / "root"), want)
    original.save_pretrained(tmp_path / "bin", safe_serialization=False)
    _assert_same_state(read_i2vgen_diffusers_unet_state(tmp_path / "bin"), want)
    original.half().save_pretrained(tmp_path / "fp16", variant="fp16")  # the hub's .fp16 files
    half = read_i2vgen_diffusers_unet_state(tmp_path / "fp16")
    _assert_same_state(half, {k: v.half() for k, v in want.items()})


# --- failures name the problem --------------------------------------------------------------


def test_renamed_key_is_named(tmp_path) -> None:
    state = dict(_sd_unet().state_dict())
    state["conv_out.weight_renamed"] = state.pop("conv_out.weight")
    named = r"missing keys, first 'conv_out\.weight'.*unexpected keys, first 'conv_out\.weight_renamed'"
    with pytest.raises(WeightsError, match=named):
        init_spatial_from_sd(UNet3D(SD_UNET), state)

    ldm = to_ldm_unet(_sd_unet())
    ldm["model.diffusion_model.outx.2.weight"] = ldm.pop("model.diffusion_model.out.2.weight")
    save_file({k: v.contiguous() for k, v in ldm.items()}, tmp_path / "sd.safetensors")
    with pytest.raises(WeightsError, match=r"sd\.safetensors: 1 keys of an unknown layout, first 'outx\.2\.weight'"):
        read_sd_unet_state(tmp_path / "sd.safetensors")


def test_wrong_shape_and_stray_temporal_keys_are_named() -> None:
    state = dict(_sd_unet().state_dict())
    state["conv_in.weight"] = torch.zeros(16, 8, 3, 3)  # I2VGen-XL's 8-channel conv_in
    shapes = r"'conv_in\.weight': \(16, 8, 3, 3\) in the file, \(16, 4, 3, 3\) in the model"
    with pytest.raises(WeightsError, match=shapes):
        init_spatial_from_sd(UNet3D(SD_UNET), state, "sd.safetensors")
    state = dict(_sd_unet().state_dict(), **{"down_blocks.0.temp_convs.0.conv1.0.weight": torch.zeros(16)})
    with pytest.raises(WeightsError, match=r"temporal or fps keys.*'down_blocks\.0\.temp_convs\.0\.conv1\.0\.weight'"):
        init_spatial_from_sd(UNet3D(SD_UNET), state)


class _Arbitrary:
    """Any class instance: unpickling it means importing and running this module's code."""


def test_pickle_payload_and_missing_files_are_refused(tmp_path) -> None:
    torch.save({"state_dict": {"time_embed.0.weight": torch.zeros(1)}, "step": 1, "extra": _Arbitrary()},
               tmp_path / "i2vgen_xl_00854500.pth")
    with pytest.raises(WeightsError, match="refused"):
        read_vgen_i2vgen_state(tmp_path / "i2vgen_xl_00854500.pth")
    with pytest.raises(WeightsError, match=r"no diffusers weights file \(looked for diffusion_pytorch_model"):
        read_sd_unet_state(tmp_path)
    save_file({"cond_stage_model.x": torch.zeros(1)}, tmp_path / "clip.safetensors")
    with pytest.raises(WeightsError, match=r"no 'model\.diffusion_model\.\*' keys"):
        read_sd_unet_state(tmp_path / "clip.safetensors")
    with pytest.raises(WeightsError, match=r"not an SD VAE checkpoint"):
        read_sd_vae_state(tmp_path / "clip.safetensors")
