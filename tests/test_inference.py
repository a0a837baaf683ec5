"""The cascade and ``i2vgen generate``: sizes, determinism, batching, and the refiner's start."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from PIL import Image

from commands.main import main
from conftest import cli_in_process, write_tiny_exports
from pipeline.generation.cascade import Cascade, from_frames, refiner_seed, refiner_steps, resize_video
from pipeline.models.release_denoiser import crop_wide
from pipeline.generation.request import ImageError, RequestError, TooLargeError, decode_image, make_request
from pipeline.config import load_config
from pipeline.models.weights import WeightsError


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)


def _read(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope="module")
def cascade(tiny_exports) -> Cascade:
    return Cascade.from_files(load_config("tiny"), tiny_exports["base"], tiny_exports["refiner"])


@pytest.fixture(scope="module")
def image(tiny_exports) -> np.ndarray:
    return np.asarray(Image.open(tiny_exports["image"]).convert("RGB"))


def test_cli_generates_the_requested_video_and_the_same_seed_gives_the_same_file(tiny_exports, tmp_path) -> None:
    common = ["generate", "--image", str(tiny_exports["image"]), "--prompt", "a red square",
              "--base", str(tiny_exports["base"]), "--refiner", str(tiny_exports["refiner"]),
              "--frames", "6", "--steps", "2", "--seed", "3"]
    first = cli_in_process(*common, "--out", str(tmp_path / "a.mp4"), "--gif", str(tmp_path / "a.gif"),
                 "--sheet", str(tmp_path / "a.png"))
    assert first.returncode == 0, first.stderr
    frames = _read(tmp_path / "a.mp4")
    assert frames.shape == (6, 128, 224, 3)  # the tiny refiner's 224x128
    assert Image.open(tmp_path / "a.gif").n_frames == 6
    assert Image.open(tmp_path / "a.png").size[0] > 0
    again = cli_in_process(*common, "--out", str(tmp_path / "b.mp4"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    base_only = cli_in_process(*common[:7], *common[9:], "--sampler", "dpm++", "--out", str(tmp_path / "c.mp4"))
    assert base_only.returncode == 0, base_only.stderr
    assert _read(tmp_path / "c.mp4").shape == (6, 64, 112, 3)  # the base's 112x64
    spectrum = _cli("eval", "spectrum", str(tmp_path / "c.mp4"), str(tmp_path / "a.mp4"), "--out", str(tmp_path / "fig7"))
    assert spectrum.returncode == 0, spectrum.stderr
    report = json.loads((tmp_path / "fig7" / "spectrum.json").read_text())
    assert report["size"] == [224, 128] and set(report["spatial"]["ratio"]) == {"low", "mid", "high"}
    assert (tmp_path / "fig7" / "spectrum.png").stat().st_size > 0


def test_cli_refuses_bad_parameters_and_mismatched_weights(tiny_exports, tmp_path, capsys) -> None:
    out = tmp_path / "x.mp4"
    args = ["generate", "--image", str(tiny_exports["image"]), "--out", str(out)]
    assert main([*args, "--base", str(tiny_exports["base"]), "--frames", "0"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main([*args, "--base", str(tiny_exports["refiner"])]) == 2
    assert "holds the refiner stage" in capsys.readouterr().err
    other = write_tiny_exports(tmp_path / "other", overrides=("unet.head_dim=8",))
    assert main([*args, "--base", str(other["base"])]) == 2
    assert "unet.head_dim" in capsys.readouterr().err
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    assert main(["generate", "--image", str(not_an_image), "--out", str(out), "--base", str(tiny_exports["base"])]) == 2
    assert "not a decodable image" in capsys.readouterr().err
    assert not out.exists()


def test_the_refiner_starts_from_the_renoised_base_at_step_tr(cascade, image) -> None:
    config = cascade.config
    request = make_request(config, image, prompt="a red square", frames=4, steps=10, seed=11, refine_from=600)
    (base_video,) = cascade.run_base([request])
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = cascade.refiner.register_forward_pre_hook(lambda module, args: calls.append((args[0], args[1])))
    try:
        cascade.run_refiner([base_video], [request])
    finally:
        hook.remove()
    latents = cascade.vae.encode_video(resize_video(from_frames([base_video]), 224, 128))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(refiner_seed(request.seed)))
    expected = cascade.noise_schedule.add_noise(latents, noise, 599)
    sample, timestep = calls[0]
    assert timestep.tolist() == [599, 599]  # T_r - 1, for the conditional and the null branch
    torch.testing.assert_close(sample[:1], expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == refiner_steps(10, 600, 1000) == 6


def test_a_batch_gives_each_request_the_video_it_gets_alone(cascade, image) -> None:
    config = cascade.config
    first = make_request(config, image, prompt="a", frames=4, steps=3, seed=1, guidance=2.0, fps=4)
    second = make_request(config, image[:, ::-1].copy(), prompt="b", frames=4, steps=3, seed=2, guidance=5.0, fps=16)
    longer = make_request(config, image, frames=6, steps=3, seed=1)  # another shape: its own batch
    together = cascade.generate([first, second, longer])
    for request, video in zip([first, second, longer], together):
        (alone,) = cascade.generate([request])
        assert video.shape == alone.shape
        assert np.abs(video.astype(int) - alone.astype(int)).max() <= 1
    assert together[2].shape[0] == 6
    assert np.abs(together[0].astype(int) - together[1].astype(int)).mean() > 1


def test_requests_are_checked_field_by_field(tiny) -> None:
    pixels = np.zeros((32, 32, 3), np.uint8)
    for field, value in [("frames", 0), ("steps", 5000), ("guidance", 0.5), ("sampler", "euler"), ("fps", 0)]:
        with pytest.raises(RequestError) as err:
            make_request(tiny, pixels, **{field: value})
        assert err.value.field == field
    with pytest.raises(ImageError, match="not a decodable image"):
        decode_image(b"GIF89a but not really", tiny.serving)
    with pytest.raises(TooLargeError, match="bytes"):
        decode_image(b"x" * 101, tiny.serving, max_bytes=100)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buffer, format="PNG")
    limits = dataclasses.replace(tiny.serving, max_image_pixels=200 * 100 - 1)
    with pytest.raises(TooLargeError, match="pixels"):
        decode_image(buffer.getvalue(), limits)
    assert decode_image(buffer.getvalue(), dataclasses.replace(limits, max_image_pixels=200 * 100)).shape == (100, 200, 3)


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_only_png_jpeg_and_webp_of_sane_shape_are_decoded(tiny) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert decode_image(_encoded((64, 48), fmt), tiny.serving).shape == (48, 64, 3)
    for fmt in ("GIF", "BMP", "TIFF", "EPS"):  # Pillow reads them all; uploads may not be them
        with pytest.raises(ImageError, match="PNG, JPEG and WebP"):
            decode_image(_encoded((64, 48), fmt), tiny.serving)
    with pytest.raises(TooLargeError, match="side"):
        decode_image(_encoded((tiny.serving.max_image_side + 1, 2), "PNG"), tiny.serving)
    with pytest.raises(TooLargeError, match="max_aspect_ratio"):
        decode_image(_encoded((900, 100), "PNG"), tiny.serving)


def test_a_very_thin_image_is_cropped_before_it_is_scaled() -> None:
    """VGen's scale-then-crop would make this 16 x 100,000 image 448 x 2,800,000 first."""
    thin = np.zeros((16, 100_000, 3), np.uint8)
    thin[:, 49_900:50_100] = 255
    out = np.asarray(crop_wide(thin, 448, 256))
    assert out.shape == (256, 448, 3) and out.mean() > 0  # the centre, and only it


def test_crop_wide_matches_vgens_scale_then_crop() -> None:
    rng = np.random.default_rng(0)
    for height, width, target in [(600, 512, (448, 256)), (300, 512, (448, 256)), (37, 501, (1280, 720))]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pil = Image.fromarray(image)
        scale = min(width / target[0], height / target[1])
        scaled = pil.resize((round(width // scale), round(height // scale)), Image.Resampling.BOX)
        left, top = (scaled.width - target[0]) // 2, (scaled.height - target[1]) // 2
        reference = np.asarray(scaled.crop((left, top, left + target[0], top + target[1]))).astype(int)
        assert np.abs(np.asarray(crop_wide(image, *target)).astype(int) - reference).max() <= 1


def test_stage_files_refuse_the_wrong_stage(tiny_exports, tiny) -> None:
    with pytest.raises(WeightsError, match="holds the base stage"):
        Cascade.from_files(tiny, refiner=tiny_exports["base"])
