"""Synthetic media: every file has the ground truth it claims, checked with the real readers
(PyAV, decord, PySceneDetect, PIL, pandas) that curation itself uses."""

from __future__ import annotations

from pathlib import Path

import av
import decord
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from support.synthetic import (
    VFR_DELTAS_MS,
    ShotSpec,
    SyntheticVideo,
    write_broken_files,
    write_image_manifest,
    write_long_video,
    write_sample_corpus,
    write_subject_frame,
    write_video,
)

SHOTS = [
    ShotSpec("static", 40, seed=1),
    ShotSpec("pan", 40, seed=2),
    ShotSpec("moving_shape", 40, seed=3),
    ShotSpec("texture", 40, transition="dissolve", dissolve_frames=12, seed=4),
    ShotSpec("static", 30, seed=5),
    ShotSpec("pan", 30, seed=6),
]


def _decode(path: Path, fmt: str = "bgr24") -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format=fmt) for frame in container.decode(video=0)]


def _mean_step(frames: list[np.ndarray]) -> list[float]:
    """Mean absolute difference between each pair of consecutive frames."""
    return [float(np.abs(b.astype(np.int16) - a).mean()) for a, b in zip(frames, frames[1:])]


@pytest.fixture(scope="module")
def multishot(tmp_path_factory) -> SyntheticVideo:
    return write_video(tmp_path_factory.mktemp("video") / "multi.mp4", SHOTS, fps=24)


@pytest.fixture(scope="module")
def frames(multishot) -> list[np.ndarray]:
    return _decode(multishot.path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    return write_broken_files(tmp_path_factory.mktemp("broken"))


def test_ground_truth_follows_the_specs(multishot) -> None:
    assert multishot.num_frames == sum(s.frames for s in SHOTS) == 220
    assert (multishot.width, multishot.height, multishot.fps) == (320, 180, 24)
    assert multishot.cuts == [40, 80, 160, 190]
    assert multishot.dissolves == [(120, 132)]
    assert [s[0] for s in multishot.shots] == [s.kind for s in SHOTS]
    assert all(a[2] == b[1] for a, b in zip(multishot.shots, multishot.shots[1:]))
    assert multishot.shots[3] == ("texture", 120, 160)  # the dissolve belongs to the new shot


def test_decodes_to_the_requested_count_and_size_with_pyav_and_decord(multishot, frames) -> None:
    assert len(frames) == multishot.num_frames
    assert frames[0].shape == (multishot.height, multishot.width, 3)
    reader = decord.VideoReader(str(multishot.path))
    assert len(reader) == multishot.num_frames
    assert reader[len(reader) - 1].shape == (multishot.height, multishot.width, 3)
    assert abs(reader.get_avg_fps() - multishot.fps) < 1e-6


@pytest.mark.parametrize("detector", [ContentDetector, AdaptiveDetector])
def test_scene_detectors_find_the_hard_cuts_and_nothing_else(multishot, frames, detector) -> None:
    found: list[int] = []
    scenes = detector()
    for i, bgr in enumerate(frames):
        found += [tc.frame_num for tc in scenes.process_frame(FrameTimecode(i, float(multishot.fps)), bgr)]
    for cut in multishot.cuts:
        assert min(abs(cut - f) for f in found) <= 2, (cut, found)
    # No false cut inside a shot (a pan's wrap-around, say); a dissolve may or may not fire.
    for f in found:
        near_cut = any(abs(cut - f) <= 2 for cut in multishot.cuts)
        assert near_cut or any(a <= f <= b for a, b in multishot.dissolves), (f, found)


def test_static_shots_are_still_and_pans_move(multishot, frames) -> None:
    steps = _mean_step(frames)
    by_kind: dict[str, list[float]] = {}
    for kind, start, end in multishot.shots:
        first = max([start] + [b for a, b in multishot.dissolves if a == start])  # skip the fade
        by_kind.setdefault(kind, []).extend(steps[first : end - 1])  # steps[i]: frame i -> i+1
    pan = min(by_kind["pan"])
    assert max(by_kind["static"]) < pan / 20
    assert max(by_kind["moving_shape"]) > 10 * max(by_kind["static"])
    assert max(by_kind["texture"]) > 10 * max(by_kind["static"])


def test_long_pans_wrap_without_a_seam(tmp_path) -> None:
    # At 160 px wide the 3 px/frame window wraps its 320 px canvas after 107 frames.
    video = write_long_video(tmp_path / "long.mp4", seconds=5, size=(160, 96))
    assert video.num_frames == 120 and video.cuts == [] and video.shots == [("pan", 0, 120)]
    steps = _mean_step(_decode(video.path))
    assert max(steps) < 2 * np.median(steps) and min(steps) > 0.5 * np.median(steps)


@pytest.mark.parametrize("size", [(180, 320), (256, 256), (97, 61)])
@pytest.mark.parametrize("share", [0.01, 0.1, 0.3, 0.6, 0.95])
def test_subject_frame_covers_the_requested_share(size: tuple[int, int], share: float) -> None:
    height, width = size
    frame = write_subject_frame(height, width, share, seed=3)
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
    colour = frame[height // 2, width // 2]
    mask = (frame == colour).all(axis=2)
    assert abs(mask.mean() - share) < 0.02
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - (height - 1) / 2) < 1 and abs(xs.mean() - (width - 1) / 2) < 1
    background = frame[~mask].astype(np.float32)
    assert background.std(axis=0).max() < 12  # low contrast, so the object is the salient thing
    assert np.abs(background.mean(axis=0) - colour).max() > 60


def test_subject_frame_rejects_impossible_shares() -> None:
    with pytest.raises(ValueError):
        write_subject_frame(10, 10, 1.5)


def test_zero_byte_and_text_files(broken) -> None:
    assert broken["zero_byte"].stat().st_size == 0
    assert broken["text"].read_text(encoding="utf-8").strip()
    for name in ("zero_byte", "text"):
        with pytest.raises(av.error.FFmpegError):
            av.open(str(broken[name]))


def test_truncated_file_does_not_open_or_decode(broken) -> None:
    with pytest.raises(av.error.FFmpegError):
        with av.open(str(broken["truncated"])) as container:
            list(container.decode(video=0))


def test_audio_only_file_has_audio_and_no_video(broken) -> None:
    with av.open(str(broken["audio_only"])) as container:
        assert not container.streams.video
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples - 44100) <= 2048  # one second, give or take the encoder's priming


def test_one_frame_and_tiny_files_decode_as_claimed(broken) -> None:
    assert len(_decode(broken["one_frame"])) == 1
    tiny = _decode(broken["tiny"])
    assert len(tiny) == 24 and tiny[0].shape == (8, 8, 3)


def test_vfr_file_has_irregular_timestamps(broken) -> None:
    with av.open(str(broken["vfr"])) as container:
        stream = container.streams.video[0]
        times = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
    deltas_ms = np.round(np.diff(times) * 1000).astype(int)
    assert len(times) == 36
    assert deltas_ms[:6].tolist() == list(VFR_DELTAS_MS) * 2
    assert deltas_ms.max() > 2 * deltas_ms.min()


def test_corrupt_middle_opens_but_fails_partway(broken, tmp_path) -> None:
    with av.open(str(broken["corrupt_middle"])) as container:
        expected = container.streams.video[0].frames
        decoded = 0
        try:
            for _ in container.decode(video=0):
                decoded += 1
        except av.error.FFmpegError:
            pass
    assert expected == 72 and 0 < decoded < expected
    data = broken["corrupt_middle"].read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data  # header and index intact


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests_read_back_with_good_and_bad_rows(tmp_path, fmt: str) -> None:
    manifest = write_image_manifest(tmp_path, count=5, fmt=fmt, bad_rows=2)
    assert manifest == (tmp_path / f"manifest.{fmt}").resolve()
    table = {"csv": pd.read_csv, "parquet": pd.read_parquet}.get(fmt, lambda p: pd.read_json(p, lines=True))(manifest)
    assert list(table.columns) == ["path", "caption"] and len(table) == 7
    assert table["caption"].is_unique and all(Path(p).is_absolute() for p in table["path"])
    contents = set()
    for path in table["path"][:5]:
        with Image.open(path) as image:
            assert image.size == (320, 180)
            contents.add(image.convert("RGB").tobytes())
    assert len(contents) == 5
    missing, fake = (Path(p) for p in table["path"][5:])
    assert not missing.exists() and fake.suffix == ".jpg"
    with pytest.raises(OSError):
        Image.open(fake)


def test_sample_corpus_is_complete_and_deterministic(tmp_path) -> None:
    corpus = write_sample_corpus(tmp_path / "a", videos=2, seed=4)
    again = write_sample_corpus(tmp_path / "b", videos=2, seed=4)
    shots = [shot for video in corpus["videos"] for shot in video.shots]
    assert {kind for kind, _, _ in shots} == {"static", "pan", "moving_shape", "texture"}
    assert all(36 <= end - start <= 72 for _, start, end in shots)
    assert any(video.dissolves for video in corpus["videos"])
    for video, twin in zip(corpus["videos"], again["videos"]):
        assert 3 <= len(video.shots) <= 5 and (video.width, video.height, video.fps) == (320, 180, 24)
        assert video.path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert video.path.read_bytes() == twin.path.read_bytes()
    assert all(path.parent == tmp_path / "a" / "broken" and path.exists() for path in corpus["broken"].values())
    assert corpus["manifest"].exists()
    assert len(pd.read_csv(corpus["manifest"])) == 6 + 2


def test_bad_specs_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError):
        ShotSpec("pan", 10, transition="dissolve", dissolve_frames=12)
    with pytest.raises(ValueError):
        ShotSpec("zoom", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", [ShotSpec("static", 2)], size=(33, 20))
