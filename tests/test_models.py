"""The model parts: shapes and dtypes in ``tiny``, the 2D-at-init property against diffusers,
and ``paper`` parameter counts against figures computed independently of our code."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel

from pipeline.config import load_config
from pipeline.config.schema import VAEConfig
from pipeline.model_info import count_parts, stage_info
from pipeline.models.build import build_autoencoder, build_clip, build_denoiser
from pipeline.models.global_encoder import GlobalEncoder
from pipeline.models.unet3d import UNet3D
from pipeline.models.vae import PixelUnshuffleAutoencoder, SDAutoencoder
from reference_models import diffusers_unet_kwargs


def _latent(cfg, stage: str = "base", batch: int = 2) -> torch.Tensor:
    s = getattr(cfg.stages, stage)
    f = cfg.vae.factor
    return torch.randn(batch, cfg.unet.in_channels, s.frames, s.height // f, s.width // f)


@pytest.mark.parametrize("stage", ["base", "refiner"])
def test_stage_denoiser_shapes_and_dtypes(tiny, stage: str) -> None:
    model = build_denoiser(tiny, stage).eval()
    x = torch.randn(2, tiny.unet.in_channels, 3, 8, 12)  # shapes and dtypes only: a small latent
    ctx_len = 1 if stage == "base" else 77
    ctx = torch.randn(2, ctx_len, tiny.unet.cross_attention_dim)
    image_latent = x[:, :, 0] if stage == "base" else None
    out = model(x, torch.tensor([3, 900]), ctx, fps=torch.tensor([4, 16]), image_latent=image_latent)
    assert out.shape == x.shape and out.dtype == torch.float32
    bf16 = model.to(torch.bfloat16)
    out16 = bf16(x.bfloat16(), torch.tensor([3, 900]), ctx.bfloat16(), fps=torch.tensor([4, 16]),
                 image_latent=None if image_latent is None else image_latent.bfloat16())
    assert out16.dtype == torch.bfloat16 and out16.shape == x.shape
    assert (model.global_encoder is not None) == (stage == "base")


def test_base_without_image_latent_or_fps_says_what_is_missing(tiny) -> None:
    model = build_denoiser(tiny, "base")
    x = _latent(tiny)
    with pytest.raises(ValueError, match="image_latent"):
        model(x, torch.tensor([1, 1]), torch.randn(2, 1, 32), fps=torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="fps"):
        model.unet(x, torch.tensor([1, 1]), torch.randn(2, 1, 32))


def test_global_encoder_follows_table_1() -> None:
    paper = load_config("paper")
    enc = GlobalEncoder(4, 1024, paper.global_encoder)
    convs = [m for m in enc.layers if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]
    assert shapes == [
        (4, 64, 5, 1), (64, 64, 3, 1),
        (64, 256, 3, 2), (256, 256, 3, 1),
        (256, 512, 3, 2), (512, 512, 3, 1),
        (512, 512, 3, 2), (512, 512, 3, 1),
        (512, 512, 3, 2), (512, 1024, 3, 1),
        (1024, 1024, 2, 2),
    ]
    # one token whatever the latent's size (the pool normalises it)
    assert enc(torch.randn(2, 4, 32, 56)).shape == (2, 1, 1024)


def test_condition_dropout_is_the_zero_context(tiny) -> None:
    model = build_denoiser(tiny, "base").eval()
    x = _latent(tiny)
    t, fps = torch.tensor([500, 500]), torch.tensor([8, 8])
    ctx, lat = torch.randn(2, 1, 32), torch.randn(2, 48, 16, 28)
    dropped = model(x, t, ctx, fps, lat, keep_condition=torch.tensor([True, False]))
    full = model(x, t, ctx, fps, lat)
    concatenated = torch.cat([x, lat.unsqueeze(2).expand_as(x)], 1)  # tiny's base reads [x_t, image] per frame
    null = model.unet(concatenated, t, torch.zeros(2, 1, 32), fps)
    torch.testing.assert_close(dropped[0], full[0])
    torch.testing.assert_close(dropped[1], null[1])
    assert not torch.allclose(full[1], null[1])


def test_at_init_the_3d_unet_is_sd_2d_unet_on_every_frame(tiny) -> None:
    """Temporal layers start as the identity: load our spatial weights into diffusers'
    UNet2DConditionModel and compare frame by frame."""
    ours = UNet3D(tiny.unet).eval()
    ref = UNet2DConditionModel(**diffusers_unet_kwargs(tiny, 2)).eval()
    ref_keys = set(ref.state_dict())
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k in ref_keys}, strict=True)
    x, t, ctx = _latent(tiny), torch.tensor([10, 700]), torch.randn(2, 5, 32)
    with torch.no_grad():
        video = ours(x, t, ctx, fps=torch.tensor([8, 2]))
        frames = torch.stack([ref(x[:, :, f], t, ctx).sample for f in range(x.shape[2])], dim=2)
    torch.testing.assert_close(video, frames, rtol=1e-5, atol=1e-5)

    # and the check can fail: once the temporal layers do something, frames interact
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "temp_convs" in name and "conv4.3" in name:
                p.normal_(0, 0.05)
        moved = ours(x, t, ctx, fps=torch.tensor([8, 2]))
    assert (moved - frames).abs().max() > 1e-3


def test_all_weights_of_diffusers_unet3d_load_and_agree(tiny) -> None:
    """ModelScope T2V's form: every diffusers UNet3DConditionModel weight loads by name."""
    ref = UNet3DConditionModel(**diffusers_unet_kwargs(tiny, 3)).eval()
    with torch.no_grad():  # make the temporal layers non-trivial
        for name, p in ref.named_parameters():
            if "proj_out" in name or "conv4" in name:
                p.normal_(0, 0.05)
    ours = UNet3D(tiny.unet).eval()
    state = ours.state_dict()
    only_ours = [k for k in state if k not in ref.state_dict()]
    assert all(k.startswith("fps_embedding.") for k in only_ours), only_ours
    state.update(ref.state_dict())
    ours.load_state_dict(state, strict=True)
    x, t, ctx = _latent(tiny), torch.tensor([10, 700]), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, ctx, fps=torch.tensor([8, 8])), ref(x, t, ctx).sample,
                                   rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny) -> None:
    plain = build_denoiser(tiny, "base").train()
    ckpt_cfg = load_config("tiny", overrides=["unet.temporal_dropout=0.0", "unet.gradient_checkpointing=true"])
    ckpt = build_denoiser(ckpt_cfg, "base").train()
    ckpt.load_state_dict(plain.state_dict())
    x = _latent(tiny)
    args = (torch.tensor([5, 50]), torch.randn(2, 1, 32), torch.tensor([8, 8]), x[:, :, 0])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, *args).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_release_gradient_checkpointing_recomputes_blocks_with_the_same_gradients() -> None:
    plain_cfg = load_config("tiny_release")
    plain = build_denoiser(plain_cfg, "base").eval()  # eval: no dropout, gradients still flow
    ckpt = build_denoiser(load_config("tiny_release", overrides=["unet.gradient_checkpointing=true"]), "base").eval()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 3, 8, 16)
    conditions = dict(
        fps=torch.tensor([8, 16]), image_latent=torch.randn(2, 4, 8, 16), image_embedding=torch.randn(2, 1, 32)
    )
    context = torch.randn(2, 7, 32)
    grads, calls = [], []
    for model in (plain, ckpt):
        count = [0]
        model.unet.down_blocks[0].resnets[0].register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        model(x, torch.tensor([5, 500]), context, **conditions).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed block ran again in the backward pass
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_clip_encoders_shapes_and_frozen(tiny) -> None:
    clip = build_clip(tiny.clip)
    image = clip.encode_image(torch.rand(2, 3, 64, 112) * 2 - 1)
    text = clip.encode_text(["a red ball bounces", "waves"])
    assert image.shape == (2, 1, 32) and text.shape == (2, 77, 32)
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training
    assert not torch.allclose(text[0], text[1])


def test_pixel_unshuffle_autoencoder_is_lossless(tiny) -> None:
    vae = build_autoencoder(tiny.vae)
    assert isinstance(vae, PixelUnshuffleAutoencoder) and vae.latent_channels == tiny.unet.in_channels
    video = torch.rand(2, 3, 5, 64, 112) * 2 - 1
    latents = vae.encode_video(video, chunk=3)
    assert latents.shape == (2, 48, 5, 16, 28)
    assert torch.allclose(vae.decode_video(latents, chunk=4), video, atol=1e-6)  # lossless up to float rounding


def test_pixel_latents_have_about_unit_variance(tmp_path) -> None:
    """The schedule's SNR assumes unit-variance latents: the tiny preset's shift and scale
    bring the sample corpus's pixel blocks there (unscaled they had a std of about 0.38)."""
    import decord

    from support.synthetic import ShotSpec, write_video

    written = write_video(tmp_path / "v.mp4", [ShotSpec(kind, 12, seed=s) for s, kind in
                                                 enumerate(("pan", "moving_shape", "static", "texture"))])
    frames = decord.VideoReader(str(written.path)).get_batch(list(range(0, 48, 4))).asnumpy()
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = build_autoencoder(load_config("tiny").vae).encode(pixels)
    assert 0.75 < float(latents.std()) < 1.3, float(latents.std())
    assert abs(float(latents.mean())) < 0.25
    raw = build_autoencoder(load_config("tiny", overrides=["vae.scaling_factor=1.0", "vae.shift_factor=0.0"]).vae)
    assert float(raw.encode(pixels).std()) < 0.5  # what the model saw before


def _prediction_jacobian(model: torch.nn.Module, cfg, side: int = 2) -> torch.Tensor:
    """d prediction / d x_t of one frame of ``side x side`` latent positions, exact, in
    float64: ``(C * side**2, C * side**2)``. Row i is the gradient of output i, computed for
    all i in one backward pass over a batch of copies (rows of a batch never interact)."""
    model = model.double().eval()
    channels = cfg.unet.in_channels
    n = channels * side * side
    x = torch.randn(1, channels, 1, side, side, dtype=torch.float64).expand(n, -1, -1, -1, -1).clone()
    x.requires_grad_(True)
    context = torch.randn(1, 1, cfg.unet.cross_attention_dim, dtype=torch.float64).expand(n, -1, -1)
    image = torch.randn(1, channels, side, side, dtype=torch.float64).expand(n, -1, -1, -1)
    out = model(x, torch.full((n,), 500), context, torch.full((n,), 8), image if model.stage == "base" else None)
    (out.reshape(n, n) * torch.eye(n, dtype=torch.float64)).sum().backward()
    return x.grad.reshape(n, n)


def _rank(matrix: torch.Tensor) -> int:
    """Numerical rank at float64 precision (a null direction gives ~1e-16 of the largest)."""
    values = torch.linalg.svdvals(matrix)
    return int((values > 1e-9 * values[0]).sum())


def _with_nonzero_init(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised layers (temporal outputs) get a little noise, so every path counts."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("stage", ["base", "refiner"])
def test_no_direction_of_the_latent_is_invisible_to_the_model(tiny, stage: str) -> None:
    """The prediction's Jacobian with respect to x_t has full rank: every direction of the
    input changes the output, so sampling can remove noise in every direction. Perturbing
    one channel at a time would not see the flaw this guards against: a conv_in with fewer
    outputs than latent channels (the old tiny: 48 -> 32) leaves a third of every latent in
    its null space, which the 3x3 kernel's neighbours do not fill."""
    from dataclasses import replace

    from pipeline.models.denoiser import StageDenoiser

    jacobian = _prediction_jacobian(_with_nonzero_init(build_denoiser(tiny, stage)), tiny)
    assert _rank(jacobian) == jacobian.shape[0]
    # The old tiny preset's shape, built past validation: rank at most 32 of 48 per position.
    narrow = replace(tiny, unet=replace(tiny.unet, block_out_channels=[32, 64]))
    jacobian = _prediction_jacobian(_with_nonzero_init(StageDenoiser(narrow, stage)), narrow)
    assert _rank(jacobian) <= 32 * 4 < jacobian.shape[0]


def test_sd_autoencoder_shapes() -> None:
    vae = SDAutoencoder(VAEConfig())
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # SD 2.1's VAE
    with torch.no_grad():
        latents = vae.encode_video(torch.rand(1, 3, 2, 32, 48) * 2 - 1)
        assert latents.shape == (1, 4, 2, 4, 6)
        assert vae.decode_video(latents).shape == (1, 3, 2, 32, 48)


def _vit_params(width: int, layers: int, patch: int, image: int, out_dim: int) -> int:
    """open_clip ViT parameter count from its architecture, written out by hand."""
    per_layer = 12 * width * width + 13 * width  # ln1, qkv, out, ln2, 4x MLP
    tokens = (image // patch) ** 2 + 1
    return 3 * patch * patch * width + width + tokens * width + 4 * width + layers * per_layer + width * out_dim


def _global_encoder_params(c_in: int, stem: int, stages: list[int], out: int) -> int:
    total = c_in * stem * 25 + stem + stem * stem * 9 + stem
    prev = stem
    for i, ch in enumerate(stages):
        mid = prev if i == len(stages) - 1 else ch
        total += prev * mid * 9 + mid + mid * ch * 9 + ch
        prev = ch
    return total + prev * out * 4 + out


def test_paper_parameter_counts_match_independent_figures() -> None:
    paper = load_config("paper")
    info = stage_info(paper, "base")
    with torch.device("meta"):
        sd21 = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024, use_linear_projection=True, sample_size=96,
        )
        modelscope = UNet3DConditionModel(cross_attention_dim=1024, attention_head_dim=64)
    n_sd = sum(p.numel() for p in sd21.parameters())
    n_ms = sum(p.numel() for p in modelscope.parameters())
    assert info.params["spatial"] == n_sd == 865_910_724
    assert info.params["spatial"] + info.params["temporal"] == n_ms
    fps = 2 * (320 * 1280 + 1280) + 2 * (1280 * 1280 + 1280) - (320 * 1280 + 1280) - (1280 * 1280 + 1280)
    assert info.params["embedding"] == fps
    assert info.params["global_encoder"] == _global_encoder_params(4, 64, [256, 512, 512, 1024], 1024)
    assert info.frozen["clip_image"] == _vit_params(1280, 32, 14, 224, 1024)
    assert info.frozen["vae"] == 83_653_863
    refiner = stage_info(paper, "refiner")
    assert refiner.params["global_encoder"] == 0 and refiner.trainable == info.trainable - info.params["global_encoder"]
    # FLOPs: the refiner's 1280x720 latent has 8x the pixels of the base's 448x256 one,
    # and attention grows faster than linearly, so it costs more than 8x per forward
    assert refiner.forward_flops > 8 * info.forward_flops > 0


def test_release_architecture_matches_the_published_model() -> None:
    """The released UNet is 1,420.47M parameters (5.68 GB in fp32 on the hub, and the
    analytic count of ../shared/research/i2vgen-reference-code.md), about 88 TFLOPs per
    forward at 16 x 88 x 160; its conv_in takes the 4 concatenated image-latent channels."""
    info = stage_info(load_config("release"), "base")
    assert info.trainable == 1_420_469_224
    assert info.shape == (1, 4, 16, 88, 160)
    assert 85e12 < info.forward_flops < 91e12
    assert info.params["embedding"] > 0 and info.params["global_encoder"] == 0


def test_tiny_counts_by_part(tiny) -> None:
    counts = count_parts(build_denoiser(tiny, "base"))
    assert all(v > 0 for v in counts.values())
    assert sum(counts.values()) == sum(p.numel() for p in build_denoiser(tiny, "base").parameters())
