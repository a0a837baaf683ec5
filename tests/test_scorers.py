"""Curation scorers on frames and videos built here, whose true motion and subject size are known."""

from __future__ import annotations

import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from curation.scorers.aesthetic import QualityScorer, build_aesthetic_scorer
from curation.scorers.laion import ClipAestheticScorer
from curation.scorers.motion import (
    frames_with_reference_distances,
    motion_vector_magnitude,
    motion_vector_score,
    sample_motion,
)
from curation.scorers.subject import saliency_map, subject_share
from pipeline.flow import flow_magnitude
from pipeline.models.aesthetic_head import LaionAestheticHead
from pipeline.models.weights import WeightsError

FPS = 24


def _texture(height: int, width: int, cell: int, seed: int) -> np.ndarray:
    """Smooth random colour texture: random values on a ``cell``-px grid, bicubic upsampled."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // cell + 1, width // cell + 1, 3)) * 255).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _pan(width: int, height: int, frames: int, step: float) -> list[np.ndarray]:
    """A horizontal pan by ``step`` of the frame width per frame, rendered at 640x360 and
    shrunk to ``width`` x ``height``, so every size shows the same motion in frame units."""
    step_px = round(step * 640)
    canvas = _texture(360, 640 + step_px * frames, cell=16, seed=0)
    out = [canvas[:, i * step_px : i * step_px + 640] for i in range(frames)]
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in out]


def _write_h264(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())
    return path


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """160x96, 24 fps, 48 frames: one textured image held still, and panning 3 px per frame."""
    folder = tmp_path_factory.mktemp("clips")
    canvas = _texture(96, 160 + 3 * 48, cell=6, seed=1)
    return {
        "static": _write_h264(folder / "static.mp4", [canvas[:, :160]] * 48),
        "pan": _write_h264(folder / "pan.mp4", [canvas[:, 3 * i : 3 * i + 160] for i in range(48)]),
    }


def test_flow_is_per_diagonal_and_per_second() -> None:
    small, large = _pan(320, 180, 5, step=0.01), _pan(640, 360, 5, step=0.01)
    truth = 0.01 * 640 / math.hypot(640, 360) * FPS  # the pan in diagonals per second
    a = flow_magnitude(small[0], small[1], 1 / FPS)
    b = flow_magnitude(large[0], large[1], 1 / FPS)
    assert abs(a - b) / b < 0.15  # same motion at two input resolutions
    every = np.mean([flow_magnitude(small[i], small[i + 1], 1 / FPS) for i in range(4)])
    second = np.mean([flow_magnitude(small[i], small[i + 2], 2 / FPS) for i in (0, 2)])
    assert abs(every - second) / every < 0.2  # and at two sampling rates
    assert abs(every - truth) / truth < 0.2
    assert flow_magnitude(small[0], small[0], 1 / FPS) < 0.01 * truth
    with pytest.raises(ValueError, match="dt_seconds"):
        flow_magnitude(small[0], small[1], 0.0)


def _shifted(canvas: np.ndarray, dx: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A 256x144 window of ``canvas`` moved ``dx`` px to the right (sub-pixel), plus grey noise."""
    window = cv2.warpAffine(canvas, np.float32([[1, 0, -dx], [0, 1, 0]]), (256, 144), flags=cv2.INTER_LINEAR)
    return np.clip(window + rng.normal(0, noise, window.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_sample_motion_follows_fast_pans_and_ignores_noise(noise: float) -> None:
    """Half a second apart, Farneback reads a 4 px/frame pan as a fraction of a 1 px/frame
    one; ``sample_motion`` reads both, and a noisy still frame as nearly still."""
    rng = np.random.default_rng(1)
    canvas = _texture(144, 256 + 8 * 13, cell=6, seed=2).astype(np.float32)
    diagonal = math.hypot(256, 144)
    for speed in (0.0, 0.5, 1.0, 4.0, 8.0):  # px per frame at 256 px wide
        earlier, before, now = (_shifted(canvas, speed * i, noise, rng) for i in (0, 11, 12))
        measured = sample_motion(before, now, FPS, (earlier, 12)).speed
        truth = speed * FPS / diagonal
        assert abs(measured - truth) <= 0.05 * truth + 0.001, (speed, measured, truth)
    gap = flow_magnitude(_shifted(canvas, 0, 0, rng), _shifted(canvas, 48, 0, rng), 0.5)
    assert gap < 0.5 * 4 * FPS / diagonal  # the failure sample_motion avoids


def test_static_scores_below_pan_for_both_motion_methods(clips: dict[str, Path]) -> None:
    truth = 3 / math.hypot(160, 96) * FPS
    flow = {}
    for name, path in clips.items():
        frames = _decode(path)
        flow[name] = float(np.mean([flow_magnitude(frames[i], frames[i + 1], 1 / FPS) for i in range(47)]))
    mv = {name: motion_vector_score(str(path)) for name, path in clips.items()}
    assert flow["static"] < 0.1 * flow["pan"] and mv["static"] < 0.1 * mv["pan"]
    # Both methods measure the pan's known speed, so they agree in scale with each other.
    assert abs(flow["pan"] - truth) / truth < 0.25
    assert abs(mv["pan"] - truth) / truth < 0.25
    assert abs(mv["pan"] - flow["pan"]) / flow["pan"] < 0.25


def _vector_magnitudes(path: Path, export: bool = True) -> list[float | None]:
    """Per-frame motion-vector magnitudes in display order, each vector divided by its
    reference distance (known from the order packets reach the decoder)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if export:
            stream.codec_context.options = {"flags2": "+export_mvs"}
        frames = frames_with_reference_distances(container, stream, 1 / float(stream.average_rate * stream.time_base))
        return [motion_vector_magnitude(frame, *distances) for frame, distances in frames]


def test_motion_vectors_per_frame_and_range(clips: dict[str, Path]) -> None:
    values = _vector_magnitudes(clips["pan"])
    per_frame = 3 / math.hypot(160, 96)
    assert values[0] is None  # the I-frame
    # B-frames next to their references and P-frames four frames after theirs (x264's
    # B-pyramid) all read the one-frame displacement.
    assert all(v is not None and abs(v - per_frame) / per_frame < 0.1 for v in values[1:])
    assert all(v is None for v in _vector_magnitudes(clips["pan"], export=False))  # nothing exported without the flag
    assert motion_vector_score(str(clips["pan"]), 1, 9) == pytest.approx(np.mean(values[1:9]) * FPS)
    assert math.isnan(motion_vector_score(str(clips["pan"]), 0, 1))  # only the I-frame


def _subject_frame(height: int, width: int, share: float, seed: int) -> np.ndarray:
    """A smooth, low-contrast background (tinted gradient plus faint blotches) with one
    centred, saturated solid disc covering ``share`` of the frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = rng.uniform(90, 150, 3).astype(np.float32) + 20 * (xx / width)[..., None] - 10 * (yy / height)[..., None]
    blotches = rng.normal(0, 6, (height // 20 + 2, width // 20 + 2, 3)).astype(np.float32)
    frame += cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    disc = (yy - height / 2 + 0.5) ** 2 + (xx - width / 2 + 0.5) ** 2 < share * height * width / math.pi
    frame[disc] = [[230, 30, 40], [30, 200, 60], [40, 60, 230]][seed % 3]
    return np.clip(frame, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.4, 0.55])
def test_subject_share_of_a_centred_disc(share: float) -> None:
    # 0.55 is a disc cut by the top and bottom edges: the border colour is still background.
    for seed in range(3):
        assert abs(subject_share(_subject_frame(180, 320, share, seed)) - share) < 0.07


def test_saliency_map_and_subjectless_frames() -> None:
    saliency = saliency_map(_subject_frame(90, 160, 0.2, seed=0))
    assert saliency.shape == (64, 64) and saliency.min() == 0 and saliency.max() == pytest.approx(1)
    assert saliency[32, 32] > 0.5 > saliency[2, 2]  # the disc, not the background
    assert subject_share(np.full((90, 160, 3), 120, np.uint8)) < 0.05  # measured 0.002
    assert subject_share(_subject_frame(180, 320, 0.0, seed=0)) < 0.2  # gradient alone: measured 0.12


def _sample_frame() -> np.ndarray:
    """Sharp, mid-exposed and colourful: a saturated colour texture with hard-edged shapes."""
    frame = _texture(180, 320, cell=12, seed=3)
    cv2.rectangle(frame, (40, 30), (120, 110), (250, 220, 30), -1)
    cv2.circle(frame, (230, 90), 45, (20, 60, 230), -1)
    return frame


def test_quality_scorer_prefers_sharp_exposed_colourful_frames() -> None:
    good = _sample_frame()
    blurred = cv2.GaussianBlur(good, (0, 0), 3)
    dark = (good * 0.06).astype(np.uint8)
    grey = np.repeat(cv2.cvtColor(good, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    scores = QualityScorer()(np.stack([good, blurred, dark, grey]))
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert scores[0] > max(scores[1:]) and ((1 <= scores) & (scores <= 10)).all()
    assert QualityScorer()(np.zeros((1, 32, 32, 3), np.uint8))[0] == pytest.approx(1.0)


def test_laion_head_has_the_released_shape() -> None:
    head = LaionAestheticHead()
    assert sum(p.numel() for p in head.parameters()) == 927_969
    assert list(head.state_dict()) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


# A CLIP small enough to save and load in a test, with ViT-L/14's 768-d embedding so the
# released head's shape fits it.
TINY_768 = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
}


def test_clip_aesthetic_scorer_loads_local_weights(tmp_path: Path) -> None:
    import open_clip

    save_file(open_clip.CLIP(**TINY_768).state_dict(), str(tmp_path / "clip.safetensors"))
    head = LaionAestheticHead()
    torch.save(head.state_dict(), tmp_path / "head.pth")  # a plain state dict, like the release
    scorer = build_aesthetic_scorer(str(tmp_path / "head.pth"), str(tmp_path / "clip.safetensors"), arch=TINY_768)
    assert isinstance(scorer, ClipAestheticScorer)
    frames = np.stack([_subject_frame(72, 120, 0.2, seed=s) for s in range(3)])
    scores = scorer(frames)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, scorer(frames))
    scorer.batch_size = 2  # batching does not change a frame's score
    np.testing.assert_allclose(scorer(frames), scores, rtol=1e-5, atol=1e-6)
    banded = frames.copy()
    banded[:, :, :24] = 0  # only the centre 72x72 square is scored
    banded[:, :, -24:] = 255
    np.testing.assert_allclose(scorer(banded), scores, rtol=1e-5, atol=1e-6)

    state = head.state_dict()
    state["layers.8.weight"] = state.pop("layers.7.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError, match="'layers.7.weight'"):
        build_aesthetic_scorer(str(tmp_path / "renamed.pth"), str(tmp_path / "clip.safetensors"), arch=TINY_768)
    with pytest.raises(ValueError, match="768-d"):
        build_aesthetic_scorer(str(tmp_path / "head.pth"), str(tmp_path / "clip.safetensors"), arch="ViT-B-32")


def test_build_aesthetic_scorer_needs_both_files_or_none() -> None:
    assert isinstance(build_aesthetic_scorer(None, None), QualityScorer)
    with pytest.raises(ValueError, match="aesthetic_clip"):
        build_aesthetic_scorer("head.pth", None)
    with pytest.raises(ValueError, match="aesthetic_head"):
        build_aesthetic_scorer(None, "clip.safetensors")
