"""Curation scorers on frames with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from curation.scorers.aesthetic import ClipAestheticScorer, LaionAestheticHead, QualityScorer, build_aesthetic_scorer
from curation.scorers.motion import flow_magnitude, motion_vector_score
from curation.scorers.subject import subject_share
from curation.synthetic import ShotSpec, write_subject_frame, write_video
from pipeline.models.clip import FrozenOpenCLIP
from pipeline.config.schema import ClipConfig
from pipeline.models.weights import WeightsError


def _pan(width: int, height: int, frames: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    from PIL import Image

    canvas = np.asarray(Image.fromarray((rng.random((height // 8, width // 4, 3)) * 255).astype(np.uint8))
                        .resize((width * 2, height), Image.BILINEAR))
    step = width // 100
    return [canvas[:, i * step : i * step + width] for i in range(frames)]


def test_flow_is_per_diagonal_and_per_second() -> None:
    small, large = _pan(320, 180), _pan(640, 360)
    a = flow_magnitude(small[0], small[2], 2 / 24)
    b = flow_magnitude(large[0], large[2], 2 / 24)
    assert abs(a - b) / a < 0.15  # same motion in frame units at two resolutions
    every = np.mean([flow_magnitude(small[i], small[i + 1], 1 / 24) for i in range(4)])
    second = np.mean([flow_magnitude(small[i], small[i + 2], 2 / 24) for i in range(0, 4, 2)])
    assert abs(every - second) / every < 0.2  # and at two sampling rates
    assert flow_magnitude(small[0], small[0], 1 / 24) < 0.05 * a


def test_static_scores_below_pan_for_both_motion_methods(tmp_path) -> None:
    static = write_video(tmp_path / "static.mp4", [ShotSpec("static", 48, seed=1)], size=(160, 96))
    pan = write_video(tmp_path / "pan.mp4", [ShotSpec("pan", 48, seed=1)], size=(160, 96))
    mv_static, mv_pan = motion_vector_score(str(static.path)), motion_vector_score(str(pan.path))
    assert mv_static < 0.2 * mv_pan
    import av

    frames = [f.to_ndarray(format="rgb24") for f in av.open(str(pan.path)).decode(video=0)]
    flow_pan = np.mean([flow_magnitude(frames[i], frames[i + 4], 4 / 24) for i in range(0, 40, 4)])
    assert 1 / 3 < flow_pan / mv_pan < 3  # the two methods measure the same thing


@pytest.mark.parametrize("share", [0.1, 0.25, 0.4])
def test_subject_share_of_a_centred_object(share: float) -> None:
    assert abs(subject_share(write_subject_frame(180, 320, share, seed=2)) - share) < 0.07


def test_flat_frame_has_no_subject() -> None:
    assert subject_share(np.full((90, 160, 3), 120, np.uint8)) < 0.05


def test_quality_scorer_prefers_sharp_exposed_colourful_frames() -> None:
    import cv2

    good = _pan(320, 180)[0]
    blurred = cv2.GaussianBlur(good, (0, 0), 4)
    dark = (good * 0.08).astype(np.uint8)
    grey = np.repeat(cv2.cvtColor(good, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    scores = QualityScorer()(np.stack([good, blurred, dark, grey]))
    assert scores[0] > max(scores[1:]) and all(1 <= s <= 10 for s in scores)


def test_laion_head_has_the_released_shape() -> None:
    head = LaionAestheticHead()
    assert sum(p.numel() for p in head.parameters()) == 927_969
    assert [k for k in head.state_dict() if k.endswith("weight")] == [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]


def test_clip_aesthetic_scorer_loads_local_weights(tmp_path) -> None:
    clip = FrozenOpenCLIP(ClipConfig(arch="tiny")).model
    save_file(clip.state_dict(), tmp_path / "clip.safetensors")
    head = LaionAestheticHead(clip.visual.output_dim)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = ClipAestheticScorer(str(tmp_path / "head.pth"), str(tmp_path / "clip.safetensors"), arch="tiny")
    frames = np.stack([write_subject_frame(64, 112, 0.2, seed=s) for s in range(3)])
    scores = scorer(frames)
    assert scores.shape == (3,) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, scorer(frames))
    state = head.state_dict()
    state["layers.9.weight"] = state.pop("layers.7.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError, match="layers.7.weight"):
        ClipAestheticScorer(str(tmp_path / "renamed.pth"), str(tmp_path / "clip.safetensors"), arch="tiny")


def test_build_aesthetic_scorer_needs_both_files_or_none(tmp_path) -> None:
    assert isinstance(build_aesthetic_scorer(None, None), QualityScorer)
    with pytest.raises(ValueError, match="aesthetic_clip"):
        build_aesthetic_scorer(str(tmp_path / "head.pth"), None)
