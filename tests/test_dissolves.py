"""Dissolves against camera motion, on real encoded files through the analysis pass.

Slow pans, tilts and zooms over smooth pictures change pixels almost linearly, as a
cross-fade does; they must keep every frame, while cross-fades between such shots and fades
to and from black must still be split out. Pictures: ``photo_like`` (always there) and a
real photograph shipped with matplotlib (skipped where it is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.analysis import Segment, iter_segments
from curation.dissolves import unexplained_share
from curation.probe import VideoInfo, probe_video
from curation.split import clip_from_segment
from pipeline.config import load_config
from support.synthetic import (
    CameraShot,
    SyntheticVideo,
    photo_like,
    sample_photographs,
    smooth_gradient,
    write_camera_video,
)

LOW = (448, 256)  # the base stage's size: decoding is cheap, the detectors' share is large
ANALYSIS_WIDTH = 256  # the tiny preset's analysis width: speeds below are in its pixels


@pytest.fixture(scope="module")
def config():
    return load_config("tiny")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return photo_like(600, 900, seed=1)


@pytest.fixture(scope="module", params=["photo_like", "real_photograph"])
def picture(request, photo) -> np.ndarray:
    """Each picture source in turn: the synthetic one, and a real photograph (matplotlib, a
    pinned dependency, ships one; without it the install is broken, and the test says so)."""
    if request.param == "photo_like":
        return photo
    found = sample_photographs()
    assert found, "no real photograph: matplotlib's sample data (grace_hopper.jpg) is missing from the install"
    return np.asarray(Image.open(found[0]).convert("RGB"))


def _segments(video: SyntheticVideo, config) -> tuple[VideoInfo, list[Segment]]:
    info = probe_video(str(video.path), config.curation.probe)
    return info, list(iter_segments(str(video.path), info, config.curation))


def _clips(info: VideoInfo, segments: list[Segment], config) -> list[tuple[int, int]]:
    drafts = (clip_from_segment(s, info.fps, config.curation.split, config.curation.camera) for s in segments)
    return [(c.start, c.end) for c in drafts if c is not None]


def _assert_every_frame_kept(video: SyntheticVideo, config) -> None:
    info, segments = _segments(video, config)
    fades = [(s.start, s.end) for s in segments if s.transition]
    assert not fades, f"camera motion taken for dissolves at {fades}"
    clips = _clips(info, segments, config)
    assert sum(end - start for start, end in clips) >= video.num_frames - 4, clips  # cuts may trim 2 + 2


def _assert_fades_split_out(video: SyntheticVideo, config) -> None:
    info, segments = _segments(video, config)
    fades = [(s.start, s.end) for s in segments if s.transition]
    for start, end in video.dissolves:
        assert any(a < end and b > start for a, b in fades), f"fade {start}-{end} not found: {fades}"
    clips = _clips(info, segments, config)
    assert clips, "the shots around the fades gave no clip"
    for start, end in video.dissolves:
        assert not any(a < end and b > start for a, b in clips), f"a clip holds fade {start}-{end}: {clips}"


def _px(speed: float, size: tuple[int, int]) -> float:
    """Output pixels per frame for ``speed`` pixels per frame at the analysis width."""
    return speed * size[0] / ANALYSIS_WIDTH


# ---------------------------------------------------------------- camera motion keeps its frames

PHOTO_MOVES = {  # per frame, at the analysis width; zoom as a relative change of scale
    "pan-0.25px": dict(pan=(0.25, 0)), "pan-1px": dict(pan=(1, 0)), "pan-4px": dict(pan=(-4, 0)),
    "tilt-0.5px": dict(pan=(0, 0.5)), "diagonal-2px": dict(pan=(1.6, -1.2)),
    "zoom-in-0.2%": dict(zoom=0.002), "zoom-in-1%": dict(zoom=0.01), "zoom-out-0.5%": dict(zoom=-0.005),
}


@pytest.mark.parametrize("move", PHOTO_MOVES.values(), ids=PHOTO_MOVES.keys())
def test_camera_moves_over_a_photograph_keep_every_frame(tmp_path, photo, config, move) -> None:
    # 3 s at 448x256: a run of linear change this short is not dropped as a lighting drift,
    # so only the motion veto keeps it (the zoom-in-1% file lost all 72 frames before it).
    shot = CameraShot(photo, 72, pan=tuple(_px(v, LOW) for v in move.get("pan", (0, 0))), zoom=move.get("zoom", 0.0))
    _assert_every_frame_kept(write_camera_video(tmp_path / "move.mp4", [shot], size=LOW), config)


@pytest.mark.parametrize("move", [dict(pan=(1, 0)), dict(pan=(0, 2)), dict(zoom=0.01)], ids=["pan", "tilt", "zoom"])
def test_camera_moves_over_a_gradient_keep_every_frame(tmp_path, config, move) -> None:
    shot = CameraShot(smooth_gradient(600, 900, seed=2), 72, pan=tuple(_px(v, LOW) for v in move.get("pan", (0, 0))),
                      zoom=move.get("zoom", 0.0))
    _assert_every_frame_kept(write_camera_video(tmp_path / "gradient.mp4", [shot], size=LOW), config)


def test_a_slow_pan_over_a_photograph_keeps_every_frame_at_480x270_and_720p(tmp_path, picture, config) -> None:
    # The reported case: 4 s, 24 fps, 480x270, a slow pan; and 2 s of it at 720p.
    for size, frames in (((480, 270), 96), ((1280, 720), 48)):
        shot = CameraShot(picture, frames, pan=(_px(0.5, size), 0))
        _assert_every_frame_kept(write_camera_video(tmp_path / f"pan_{size[1]}.mp4", [shot], size=size), config)


# ------------------------------------------------------------------- blends are still split out


def test_cross_fades_between_camera_moves_are_split_out(tmp_path, picture, photo, config) -> None:
    size = (480, 270)
    other = photo_like(600, 900, seed=2)
    shots = [
        CameraShot(picture, 48, pan=(_px(1, size), 0)),
        CameraShot(other, 60, pan=(0, _px(0.5, size)), transition="dissolve", dissolve_frames=24),
        CameraShot(smooth_gradient(600, 900, seed=3), 48, pan=(_px(-1, size), 0), transition="dissolve",
                   dissolve_frames=12),
    ]
    _assert_fades_split_out(write_camera_video(tmp_path / "cross.mp4", shots, size=size), config)


def test_fades_from_and_to_black_are_split_out(tmp_path, picture, config) -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    shots = [
        CameraShot(black, 24),
        CameraShot(picture, 72, zoom=0.005, transition="dissolve", dissolve_frames=24),
        CameraShot(black, 36, transition="dissolve", dissolve_frames=18),
    ]
    _assert_fades_split_out(write_camera_video(tmp_path / "black.mp4", shots, size=(480, 270)), config)


# ---------------------------------------------------------------------------- the motion veto


def _grey(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    small = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.2)


def test_motion_explains_moved_frames_and_not_blends(photo) -> None:
    import cv2

    size = (64, 36)  # the veto's frames for the 128x72 detection frames of 16:9 video
    def frame(dx: float, scale: float) -> np.ndarray:  # a 256x144 view into the photo, moved
        view = np.float32([[scale, 0, 300 + dx], [0, scale, 200]])
        return cv2.warpAffine(photo, view, (256, 144), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)

    other = photo_like(144, 256, seed=5)
    base = _grey(frame(0, 1.0), size)
    assert unexplained_share(base, _grey(frame(12, 1.0), size)) < 0.25  # a pan
    assert unexplained_share(base, _grey(frame(0, 0.95), size)) < 0.25  # a zoom
    ramp = smooth_gradient(600, 900, seed=4)
    assert unexplained_share(_grey(ramp[:144, :256], size), _grey(ramp[:144, 20:276], size)) < 0.25  # no texture
    blend = (0.5 * frame(0, 1.0) + 0.5 * other).astype(np.uint8)
    assert unexplained_share(base, _grey(blend, size)) > 0.6  # half-way through a cross-fade
    assert unexplained_share(base, _grey((0.5 * frame(0, 1.0)).astype(np.uint8), size)) > 0.6  # a fade to black


# ------------------------------------------------------------------------- the generator itself


def test_camera_videos_record_their_fades_and_are_deterministic(tmp_path, photo) -> None:
    shots = [CameraShot(photo, 20, pan=(2, 0)),
             CameraShot(photo, 30, zoom=0.01, transition="dissolve", dissolve_frames=10),
             CameraShot(photo, 10, transition="cut")]
    video = write_camera_video(tmp_path / "a.mp4", shots, size=(160, 96))
    again = write_camera_video(tmp_path / "b.mp4", shots, size=(160, 96))
    assert (video.num_frames, video.dissolves, video.cuts) == (60, [(20, 30)], [50])
    assert [s[0] for s in video.shots] == ["camera"] * 3
    assert Path(video.path).read_bytes() == Path(again.path).read_bytes()
    assert np.array_equal(photo_like(60, 80, seed=3), photo_like(60, 80, seed=3))
    with pytest.raises(ValueError, match="RGB uint8"):
        CameraShot(photo.astype(np.float32), 10)
    with pytest.raises(ValueError, match="dissolve_frames"):
        CameraShot(photo, 5, transition="dissolve", dissolve_frames=6)
    assert all(p.is_file() for p in sample_photographs())
