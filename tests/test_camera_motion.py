"""Camera motion classes on real encoded camera moves with known ground truth: each move over
a photograph, through the analysis pass and the clip split as curation runs them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.analysis import iter_segments
from curation.probe import probe_video
from curation.scorers.camera import fit_global_motion
from curation.split import clip_from_segment
from pipeline.config import load_config
from support.synthetic import CameraShot, photo_like, sample_photographs, write_camera_video

SIZE = (448, 256)
FRAMES = 60  # 2.5 s at 24 fps: five samples at 2 fps

# CameraShot's arguments -> the class a person would give the shot. A camera moving right
# over the picture is a pan right (the picture slides left); moving down, a tilt down.
MOVES = {
    "pan_right": dict(pan=(2.0, 0.0)),
    "pan_left": dict(pan=(-1.0, 0.0)),
    "tilt_down": dict(pan=(0.0, 1.5)),
    "tilt_up": dict(pan=(0.3, -2.0)),  # a tilt with a little drift sideways
    "zoom_in": dict(zoom=0.006),
    "zoom_out": dict(zoom=-0.006),
    "rotate": dict(roll=0.4),
    "shaky": dict(shake=6.0, seed=3),
    "static": dict(),
}


def _picture(seed: int) -> np.ndarray:
    photos = sample_photographs()
    if photos and seed % 2 == 0:
        return np.asarray(Image.open(photos[0]).convert("RGB"))
    return photo_like(600, 900, seed=seed)


def _camera_class(path: Path) -> tuple[str | None, float | None]:
    config = load_config("paper")
    info = probe_video(str(path), config.curation.probe)
    drafts = [clip_from_segment(s, info.fps, config.curation.split, config.curation.camera)
              for s in iter_segments(str(path), info, config.curation)]
    drafts = [d for d in drafts if d is not None]
    assert len(drafts) == 1, f"{path.name}: one shot, one clip expected, got {len(drafts)}"
    return drafts[0].camera_motion, drafts[0].camera_confidence


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("expected", list(MOVES))
def test_each_camera_move_gets_its_class(tmp_path: Path, expected: str, seed: int) -> None:
    shot = CameraShot(_picture(seed), FRAMES, **MOVES[expected])
    path = write_camera_video(tmp_path / f"{expected}.mp4", [shot], size=SIZE).path
    label, confidence = _camera_class(path)
    assert label == expected, (expected, label, confidence)
    assert confidence is not None and confidence > 0.4, (expected, confidence)  # 0.46-1.0 measured


@pytest.mark.parametrize("mover", [3.0, 8.0])
def test_a_subject_crossing_a_still_camera_leaves_it_static(tmp_path: Path, mover: float) -> None:
    shot = CameraShot(_picture(0), FRAMES, mover=mover)
    path = write_camera_video(tmp_path / "subject.mp4", [shot], size=SIZE).path
    assert _camera_class(path)[0] == "static"


def test_a_pan_behind_a_subject_is_still_a_pan(tmp_path: Path) -> None:
    shot = CameraShot(_picture(1), FRAMES, pan=(-1.5, 0.0), mover=6.0)
    path = write_camera_video(tmp_path / "both.mp4", [shot], size=SIZE).path
    assert _camera_class(path)[0] == "pan_left"


def test_the_model_reads_a_known_flow_field_exactly() -> None:
    """Every component of a similarity flow comes back, per second, in frame diagonals, and a
    block of contrary flow (a subject) over a fifth of the frame does not move it."""
    height, width = 90, 160
    diagonal = math.hypot(width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xs - (width - 1) / 2, ys - (height - 1) / 2
    pan, tilt, zoom, turn = 1.2, -0.6, 0.01, 0.004  # pixels, and per frame
    field = np.stack([pan + zoom * x - turn * y, tilt + turn * x + zoom * y], axis=-1)
    field[20:60, 40:80] = (-6.0, 4.0)  # a subject moving against the camera
    model = fit_global_motion(field, seconds=0.5)
    assert model.pan == pytest.approx(pan / diagonal / 0.5, rel=0.02)
    assert model.tilt == pytest.approx(tilt / diagonal / 0.5, rel=0.02)
    assert model.zoom == pytest.approx(zoom / 0.5, rel=0.02)
    assert model.rotation == pytest.approx(turn / 0.5, rel=0.02)
    assert 0.85 < model.explained < 0.92  # the subject's share, 1600 of 14400 pixels, is not explained
