"""Frequency comparison of base and refined videos (inference.spectrum), on real H.264 files:
smooth base content, and refined content that adds known spatial and temporal detail."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.spectrum import compare_spectra, spatial_spectrum, temporal_spectrum
from support.synthetic import encode_frames

FRAMES = 16
BASE_SIZE = (112, 64)  # (width, height)
REFINED_SIZE = (224, 128)


def write_video(path: Path, frames: np.ndarray) -> Path:
    """Encode ``(T, H, W)`` gray frames in [0, 1] as an H.264 yuv420p mp4."""
    rgb = np.repeat((np.clip(frames, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    encode_frames(path, rgb, 8, (rgb.shape[2], rgb.shape[1]), crf=10)  # the same frames, the same bytes
    return path


def smooth(size: tuple[int, int], frames: int = FRAMES) -> np.ndarray:
    """Low-frequency gradients drifting slowly: content with little high-band energy."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    t = np.arange(frames)[:, None, None]
    return (0.5 + 0.2 * np.sin(2 * np.pi * (x + 0.02 * t)) + 0.15 * np.cos(2 * np.pi * (y - 0.5 * x - 0.015 * t))
            + 0.05 * np.sin(2 * np.pi * (2 * x + 1.5 * y)))


def upsample(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The cascade's bilinear resize of base frames to ``size = (width, height)``."""
    tensor = torch.from_numpy(frames).float()[:, None]
    return F.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", align_corners=False)[:, 0].numpy()


def texture(size: tuple[int, int], amplitude: float = 0.06) -> np.ndarray:
    """A fixed white-noise pattern: spatial detail spread up to the Nyquist frequency."""
    return amplitude * np.random.default_rng(0).uniform(-1, 1, size=(size[1], size[0]))


def flicker(frames: int = FRAMES, amplitude: float = 0.04) -> np.ndarray:
    """Brightness alternating frame to frame: temporal energy at the Nyquist frequency."""
    return amplitude * (-1.0) ** np.arange(frames)[:, None, None]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spectrum")
    base = smooth(BASE_SIZE)
    up = upsample(base, REFINED_SIZE)
    return {
        "base": write_video(root / "base.mp4", base),
        "refined": write_video(root / "refined.mp4", up + texture(REFINED_SIZE) + flicker()),
        "upsampled": write_video(root / "upsampled.mp4", up),
        "same_a": write_video(root / "same_a.mp4", smooth(REFINED_SIZE) + texture(REFINED_SIZE)),
        "same_b": write_video(root / "same_b.mp4", smooth(REFINED_SIZE) + texture(REFINED_SIZE)),
        "short": write_video(root / "short.mp4", smooth(BASE_SIZE, frames=2)),
    }


@pytest.fixture(scope="module")
def reports(videos, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Each comparison the tests read, run once: (report, its output folder)."""
    pairs = {"refined": ("base", "refined"), "upsampled": ("base", "upsampled"), "same": ("same_a", "same_b")}
    out = {}
    for name, (base, refined) in pairs.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = compare_spectra(videos[base], videos[refined], folder), folder
    return out


def test_refiner_detail_raises_the_high_bands_and_writes_json_and_png(reports) -> None:
    report, folder = reports["refined"]

    assert report["frames"] == FRAMES and report["size"] == list(REFINED_SIZE)
    assert report["base_size"] == list(BASE_SIZE)
    for domain in ("spatial", "temporal"):
        for video in ("base", "refined"):
            shares = report[domain][video]["share"]
            assert set(shares) == {"low", "mid", "high"}
            assert abs(sum(shares.values()) - 1) < 1e-6
        assert report[domain]["refined"]["share"]["high"] > report[domain]["base"]["share"]["high"]
        assert report[domain]["ratio"]["high"] > 1
    # the texture is white noise, so in space the high band gains far more than the low one
    assert report["spatial"]["ratio"]["high"] > 10 * report["spatial"]["ratio"]["low"]

    written = json.loads((folder / "spectrum.json").read_text())
    assert written == report
    assert set(written) >= {"base", "refined", "frames", "size", "bands", "spatial", "temporal"}
    assert written["bands"]["high"] == [2 / 3, 1.0]
    assert set(written["spatial"]) == {"base", "refined", "ratio"}
    assert set(written["spatial"]["base"]) == {"energy", "share"}
    assert (folder / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upsampled_base_alone_keeps_the_low_band(reports) -> None:
    """A 'refiner' that only upsamples adds nothing where the content is: resampling matches."""
    report, _ = reports["upsampled"]
    assert report["spatial"]["ratio"]["low"] == pytest.approx(1, rel=0.05)
    assert report["temporal"]["ratio"]["low"] == pytest.approx(1, rel=0.05)


def test_identical_content_gives_ratios_of_one(reports) -> None:
    report, _ = reports["same"]
    assert report["size"] == report["base_size"] == list(REFINED_SIZE)
    for domain in ("spatial", "temporal"):
        assert report[domain]["ratio"]["high"] == pytest.approx(1, rel=0.05)
        assert report[domain]["base"]["share"] == pytest.approx(report[domain]["refined"]["share"], abs=0.01)


def test_flicker_raises_the_temporal_high_band(reports) -> None:
    steady, flickering = reports["upsampled"][0]["temporal"], reports["refined"][0]["temporal"]
    assert flickering["refined"]["share"]["high"] > steady["refined"]["share"]["high"] + 0.3


def test_max_frames_caps_the_evenly_spaced_frames(videos, tmp_path) -> None:
    assert compare_spectra(videos["base"], videos["base"], tmp_path, max_frames=8)["frames"] == 8


def test_spectra_place_pure_tones_at_their_normalised_frequency() -> None:
    # 0.25 cycles/pixel across the frame is half the Nyquist frequency: the mid band
    x = torch.arange(64, dtype=torch.float32)
    frames = torch.sin(2 * math.pi * 0.25 * x).expand(4, 32, 64).contiguous()
    spatial = spatial_spectrum(frames)
    assert spatial.freq[np.nanargmax(spatial.amplitude)] == pytest.approx(0.5, abs=0.03)
    assert spatial.energy["mid"] > 0.95 * sum(spatial.energy.values())

    # 0.4 cycles/frame is 0.8 of the Nyquist frequency: the high band
    t = torch.arange(40, dtype=torch.float32)
    frames = torch.sin(2 * math.pi * 0.4 * t)[:, None, None].expand(40, 4, 4).contiguous()
    temporal = temporal_spectrum(frames)
    assert temporal.freq[0] > 0 and temporal.freq[-1] == 1.0
    assert temporal.freq[np.argmax(temporal.amplitude)] == pytest.approx(0.8, abs=1e-6)
    assert temporal.energy["high"] > 0.95 * sum(temporal.energy.values())


def test_missing_unreadable_and_too_short_videos_fail_clearly(videos, tmp_path) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        compare_spectra(missing, videos["refined"], tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        compare_spectra(videos["base"], junk, tmp_path)
    with pytest.raises(ValueError, match="frames"):
        compare_spectra(videos["short"], videos["refined"], tmp_path)
    with pytest.raises(ValueError, match="frames"):
        temporal_spectrum(torch.zeros(2, 8, 8))
