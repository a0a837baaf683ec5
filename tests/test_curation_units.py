"""Curation stages one by one, on real encoded files: sources, probe, shots, clips, buckets,
decisions, and the task runner's handling of hung and crashing workers."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.analysis import iter_segments
from curation.buckets import aspect_bucket, frame_fps_pairs
from curation.decisions import balancing_weights, keep_and_reasons
from curation.probe import Rejected, _timestamps, probe_video
from curation.sources import MediaItem, expand_inputs, media_kind, read_caption
from curation.split import clip_from_segment
from curation.worker import process_item
from pipeline.config import load_config
from pipeline.config.schema import FiltersConfig, ProbeConfig
from support.synthetic import ShotSpec, write_broken_files, write_video

SHOTS = [
    ShotSpec("static", 40, seed=1),
    ShotSpec("pan", 40, seed=2),
    ShotSpec("moving_shape", 40, seed=3),
    ShotSpec("texture", 40, transition="dissolve", dissolve_frames=12, seed=4),
    ShotSpec("static", 40, seed=5),
]


@pytest.fixture(scope="module")
def multishot(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "multi.mp4", SHOTS, fps=24)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return write_broken_files(tmp_path_factory.mktemp("broken"))


def test_sources_expand_folders_globs_manifests_and_sidecars(tmp_path, multishot) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(multishot.path.read_bytes())
    (videos / "a.txt").write_text("a pan over hills\n")
    (videos / "notes.md").write_text("ignored: not media")
    image = tmp_path / "img.png"
    image.write_bytes(b"\x89PNG")
    pq.write_table(pa.table({"url": [str(image), "", "https://example.com/x.jpg", "rel.jpg"], "TEXT": ["a", "b", "c", "d"]}),
                   tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "x.mov", "caption": "from jsonl"}) + "\n")
    items, rejects = expand_inputs([str(videos), str(tmp_path / "m.parquet"), str(tmp_path / "*.jsonl"), str(tmp_path / "absent")])
    by_uri = {i.uri: i for i in items}
    assert read_caption(by_uri[str(videos / "a.mp4")]) == "a pan over hills"  # the sidecar, read by the worker
    assert by_uri[str(image)] == MediaItem(str(image), "image", "a")
    assert by_uri[str(tmp_path / "rel.jpg")].caption == "d"  # relative to the manifest
    assert by_uri[str(tmp_path / "x.mov")].kind == "video"
    reasons = {r.source: (r.stage, r.reason) for r in rejects}
    assert any("empty" in reason for _, reason in reasons.values())
    assert "download the files first" in reasons["https://example.com/x.jpg"][1]
    assert reasons[str(tmp_path / "absent")][0] == "source"


def test_a_folder_scan_follows_no_folder_links_and_survives_undecodable_names(tmp_path, multishot) -> None:
    """A link to a folder outside (``/etc`` in the wild) or back up (a loop) is a reject, not
    a listing of the machine; a file name that is not UTF-8 is a reject naming its bytes; a
    link to a file is a file."""
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    (videos / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "elsewhere.mp4").write_bytes(multishot.path.read_bytes())
    (videos / "sub" / "a.mp4").write_bytes(multishot.path.read_bytes())
    (videos / "outside").symlink_to(outside)
    (videos / "sub" / "loop").symlink_to(videos)
    (videos / "linked.mp4").symlink_to(outside / "elsewhere.mp4")
    with open(os.fsencode(videos) + b"/na\xefve.mp4", "wb") as f:  # a Latin-1 name
        f.write(multishot.path.read_bytes())
    for inputs in ([str(videos)], [str(videos / "*.mp4")]):
        items, rejects = expand_inputs(inputs)
        reasons = {r.source: r.reason for r in rejects}
        assert "not valid UTF-8" in reasons[f"{videos}/na\\xefve.mp4"]
        assert str(videos / "linked.mp4") in {i.uri for i in items}
    items, rejects = expand_inputs([str(videos)])
    assert sorted(i.uri for i in items) == [str(videos / "linked.mp4"), str(videos / "sub" / "a.mp4")]
    reasons = {r.source: r.reason for r in rejects}
    assert "not followed" in reasons[str(videos / "outside")] and "not followed" in reasons[str(videos / "sub" / "loop")]


def test_a_folder_that_cannot_be_listed_is_a_reject(tmp_path, multishot, monkeypatch) -> None:
    """Permission denied on a subfolder (injected: these tests run as root, who is never
    denied) is a reject naming it; the rest of the folder is still curated."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "a.mp4").write_bytes(multishot.path.read_bytes())
    real = os.scandir

    def denied(path):
        if os.fsencode(path).endswith(b"locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    items, rejects = expand_inputs([str(tmp_path)])
    assert [i.uri for i in items] == [str(tmp_path / "a.mp4")]
    assert [(r.source, r.reason.startswith("cannot list this folder: Permission denied")) for r in rejects] == [
        (str(tmp_path / "locked"), True)]


def _folder_with_links(root: Path, video: Path) -> Path:
    """videos/{sub/a.mp4, sub/loop -> videos, again -> outside, outside -> outside}, and
    outside/elsewhere.mp4 beside it: a loop back up and two links to one folder."""
    videos, outside = root / "videos", root / "outside"
    (videos / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(video, outside / "elsewhere.mp4")
    shutil.copyfile(video, videos / "sub" / "a.mp4")
    (videos / "sub" / "loop").symlink_to(videos)
    (videos / "again").symlink_to(outside)
    (videos / "outside").symlink_to(outside)
    return videos


def test_follow_symlinks_lists_each_real_folder_once(tmp_path, multishot) -> None:
    """With curation.follow_symlinks a folder scan and a ``**`` glob go through links, but
    list each real folder once: the loop and the second link are rejects naming them."""
    videos = _folder_with_links(tmp_path, multishot.path)
    follow = load_config("tiny", overrides=["curation.follow_symlinks=true"]).curation
    for inputs in ([str(videos)], [str(videos / "**" / "*.mp4")]):
        items, rejects = expand_inputs(inputs, follow)
        assert [i.uri for i in items] == [str(videos / "again" / "elsewhere.mp4"), str(videos / "sub" / "a.mp4")]
        reasons = {r.source: r.reason for r in rejects}
        assert sorted(reasons) == [str(videos / "outside"), str(videos / "sub" / "loop")], inputs
        assert all("listed already" in reason for reason in reasons.values())
    items, rejects = expand_inputs([str(videos / "**" / "*.mp4")])  # without: a glob follows no link either
    assert [i.uri for i in items] == [str(videos / "sub" / "a.mp4")]
    assert all("not followed" in r.reason for r in rejects) and len(rejects) == 3


def test_local_globs_match_as_glob_does(tmp_path) -> None:
    """Local globs are matched while walking (so they obey the link rules) and must match
    what ``glob.glob(recursive=True)`` matches on a tree without links, hidden names included."""
    for name in ("a.mp4", "b.png", ".hidden.mp4", "x/c.mp4", "x/y/d.mp4", "x/.h/e.mp4", "z/f.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for pattern in ("*.mp4", "**/*.mp4", "x/**", "*/c.mp4", "x/*/*.mp4", "**/.h/*", "[ab].*", "x/**/d.mp4", ".*"):
        expected = sorted(m for m in glob.glob(str(tmp_path / pattern), recursive=True) if os.path.isfile(m))
        items, _ = expand_inputs([str(tmp_path / pattern)], load_config("tiny").curation)
        media = sorted(m for m in expected if media_kind(m))
        assert [i.uri for i in items] == media, pattern


def test_manifest_rows_stay_inside_the_allowed_roots(tmp_path) -> None:
    """A manifest row may name only the allowed roots and the inputs' own; a query string
    (which pyarrow reads as filesystem options) is refused wherever it points."""
    inside, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir()
    elsewhere.mkdir()
    rows = ["ok.png", "../elsewhere/up.png", str(elsewhere / "abs.png"), f"file://{elsewhere}/f.png",
            "s3://bucket/k.mp4", "s3://bucket-evil/k.mp4", "S3://bucket/../other/k.mp4",
            "s3://bucket/k.mp4?scheme=http&endpoint_override=127.0.0.1:9", "gs://bucket/k?region=x.mp4"]
    pq.write_table(pa.table({"path": rows}), inside / "m.parquet")
    narrow = load_config("tiny", overrides=['curation.allowed_roots=["s3://bucket"]']).curation
    items, rejects = expand_inputs([str(inside / "m.parquet")], narrow)
    assert [i.uri for i in items] == [str(inside / "ok.png"), "s3://bucket/k.mp4"]
    reasons = {r.source: r.reason for r in rejects}
    for source in (f"{inside}/../elsewhere/up.png", *rows[2:4], *rows[5:7]):
        assert "outside the allowed roots" in reasons[source], source
    for source in rows[-2:]:
        assert "query string" in reasons[source], source
    items, rejects = expand_inputs([str(inside / "m.parquet")])  # the default: "/" and the inputs' roots
    assert len(items) == 4 and sum("outside the allowed roots" in r.reason for r in rejects) == 3


def test_probe_caps_reject_huge_videos_before_decoding(tmp_path) -> None:
    """Frames, seconds and pixels are capped from the header when it tells, else while
    demuxing, so the probe never holds more than max_frames timestamps."""
    shots = [ShotSpec("pan", 48, seed=1)]
    mp4, mkv = write_video(tmp_path / "v.mp4", shots), write_video(tmp_path / "v.mkv", shots)  # mkv: no frame count
    cases = [(mp4, ProbeConfig(max_frames=40), "the header's frame count (48) is over curation.probe.max_frames=40"),
             (mkv, ProbeConfig(max_frames=40), "its frame count is over curation.probe.max_frames=40"),
             (mp4, ProbeConfig(max_seconds=1.5), "the header's duration (2 s) is over curation.probe.max_seconds=1.5"),
             (mp4, ProbeConfig(max_pixels=320 * 180 - 1), "frame size 320x180 is over curation.probe.max_pixels")]
    for video, cfg, words in cases:
        with pytest.raises(Rejected) as err:
            probe_video(str(video.path), cfg)
        assert err.value.stage == "probe" and words in err.value.reason
    assert probe_video(str(mkv.path), ProbeConfig(max_frames=48, max_seconds=2.0)).num_frames == 48
    with av.open(str(mkv.path)) as container:  # a header that claims nothing: the demuxed timestamps' span
        stream = container.streams.video[0]
        with pytest.raises(Rejected, match="its timestamps' span is over curation.probe.max_seconds=1.5"):
            _timestamps(container, stream, float(stream.time_base), ProbeConfig(max_seconds=1.5))


def test_images_over_the_pixel_cap_are_rejected_before_decoding(tmp_path) -> None:
    config = load_config("tiny")
    Image.new("1", (8000, 8000)).save(tmp_path / "big.png")  # 64 M pixels: over max_pixels, under PIL's bomb limit
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # over PIL's decompression-bomb limit
    for name, words in (("big.png", "is over curation.probe.max_pixels"), ("bomb.png", "decompression bomb")):
        with pytest.raises(Rejected) as err:
            process_item(MediaItem(str(tmp_path / name), "image"), config)
        assert err.value.stage == "image" and words in err.value.reason, name


def test_ray_losses_are_told_from_faults() -> None:
    """Which Ray failures become retryable rejects (``curation.job.ray_loss``): a worker
    killed for memory, a node gone, an object lost, an actor dead at work; found through
    the wrapping Ray Data adds. A dead actor's constructor, or our code's error, is no loss."""
    from ray.exceptions import ActorDiedError, NodeDiedError, ObjectLostError, OutOfMemoryError, RayTaskError

    from curation.job import ray_loss
    from curation.sandbox import CurationCodeError

    def wrapped(err: BaseException) -> BaseException:
        """A RuntimeError raised while handling ``err``, as Ray Data's executor raises its own."""
        outer = RuntimeError("dataset execution failed")
        outer.__context__ = err
        return outer

    oom = OutOfMemoryError("Task was killed due to the node running low on memory.")
    lost = [oom, NodeDiedError("node 10.0.0.2 died"), ObjectLostError("ab" * 14, None, ""), ActorDiedError(),
            RayTaskError("FileStage.__call__", "tb", oom).as_instanceof_cause()]
    for err in lost:
        assert ray_loss(err) is err and ray_loss(wrapped(err)) is err
    init_failed = ActorDiedError(RayTaskError("FileStage.__init__", "tb", ImportError("no module named decord")))
    for err in (init_failed, CurationCodeError("broken"), KeyError("x"), RuntimeError("dataset execution failed")):
        assert ray_loss(err) is None and ray_loss(wrapped(err)) is None


@pytest.mark.parametrize(
    "name, words",
    [
        ("zero_byte", "empty file"),
        ("truncated", "not a readable video container"),
        ("text", "not a readable video container"),
        ("audio_only", "no video stream"),
        ("one_frame", "only 1 frame"),
        ("tiny", "frame size 8x8"),
        ("vfr", "variable frame rate"),
    ],
)
def test_probe_rejects_each_broken_kind_with_a_reason(broken, name: str, words: str) -> None:
    with pytest.raises(Rejected) as err:
        probe_video(str(broken[name]), ProbeConfig())
    assert err.value.stage == "probe" and words in err.value.reason


def test_probe_reads_the_true_size_rate_and_count(multishot) -> None:
    info = probe_video(str(multishot.path), ProbeConfig())
    assert (info.width, info.height, info.num_frames) == (multishot.width, multishot.height, multishot.num_frames)
    assert abs(info.fps - 24) < 1e-6


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_segments_start_at_the_hard_cuts(multishot, detector: str) -> None:
    config = load_config("tiny", overrides=[f"curation.shots.detector={detector}"])
    info = probe_video(str(multishot.path), config.curation.probe)
    segments = list(iter_segments(str(multishot.path), info, config.curation))
    found = [s.start for s in segments if s.starts_at_cut]
    for cut in multishot.cuts:
        assert min(abs(cut - f) for f in found) <= 2, (cut, found)
    assert segments[0].start == 0 and segments[-1].end == multishot.num_frames
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_detection_at_half_the_frame_rate_puts_no_frame_of_a_shot_in_another_shots_clip(tmp_path, detector) -> None:
    """Shot detection reads every second frame of 24 fps video (``curation.shots.detect_fps``
    12): cuts at odd and even frames are found up to a frame late, and the frames trimmed at
    each cut keep every clip inside one shot, as reading every frame does."""
    shots = [ShotSpec("texture", 31, seed=31), ShotSpec("static", 36, seed=32), ShotSpec("moving_shape", 33, seed=33),
             ShotSpec("pan", 40, seed=34)]
    video = write_video(tmp_path / "odd_cuts.mp4", shots, fps=24)
    assert {c % 2 for c in video.cuts} == {0, 1}
    for detect_fps in (12.0, 0.0):
        config = load_config("tiny", overrides=[f"curation.shots.detector={detector}",
                                                f"curation.shots.detect_fps={detect_fps}"])
        info = probe_video(str(video.path), config.curation.probe)
        segments = list(iter_segments(str(video.path), info, config.curation))
        found = [s.start for s in segments if s.starts_at_cut]
        assert all(any(0 <= f - cut <= 1 for f in found) for cut in video.cuts), (detect_fps, video.cuts, found)
        clips = [c for c in (clip_from_segment(s, info.fps, config.curation.split, config.curation.camera)
                             for s in segments) if c is not None]
        assert len(clips) == len(shots), (detect_fps, [(c.start, c.end) for c in clips])
        assert all(any(start <= c.start and c.end <= end for _, start, end in video.shots) for c in clips)


def test_dissolves_are_split_out_and_their_frames_dropped(multishot) -> None:
    config = load_config("tiny")
    info = probe_video(str(multishot.path), config.curation.probe)
    segments = list(iter_segments(str(multishot.path), info, config.curation))
    fades = [(s.start, s.end) for s in segments if s.transition]
    assert len(fades) == len(multishot.dissolves) == 1
    (start, end), (true_start, true_end) = fades[0], multishot.dissolves[0]
    assert abs(start - true_start) <= 3 and abs(end - true_end) <= 3, (fades, multishot.dissolves)
    clips = [c for c in (clip_from_segment(s, info.fps, config.curation.split, config.curation.camera) for s in segments) if c is not None]
    assert clips and not any(c.start < true_end and c.end > true_start for c in clips)  # no clip holds a faded frame
    off = load_config("tiny", overrides=["curation.split.dissolves=false"])
    assert not any(s.transition for s in iter_segments(str(multishot.path), info, off.curation))


def test_cuts_pans_and_static_shots_give_no_dissolves(tmp_path) -> None:
    shots = [ShotSpec("static", 30, seed=21), ShotSpec("pan", 60, seed=22), ShotSpec("texture", 40, seed=23),
             ShotSpec("static", 30, seed=24), ShotSpec("moving_shape", 30, seed=25)]
    video = write_video(tmp_path / "cuts.mp4", shots)
    config = load_config("tiny")
    info = probe_video(str(video.path), config.curation.probe)
    segments = list(iter_segments(str(video.path), info, config.curation))
    assert not any(s.transition for s in segments)
    assert len([s for s in segments if s.starts_at_cut]) == len(video.cuts)


def test_long_shots_are_windowed_and_memory_is_per_segment(tmp_path) -> None:
    video = write_video(tmp_path / "long.mp4", [ShotSpec("pan", 120, seed=3)], fps=24)
    config = load_config("tiny", overrides=["curation.split.max_seconds=2.0"])
    info = probe_video(str(video.path), config.curation.probe)
    segments = list(iter_segments(str(video.path), info, config.curation))
    assert [(s.start, s.end) for s in segments] == [(0, 48), (48, 96), (96, 120)]
    assert all(not s.starts_at_cut for s in segments)
    assert all(all(s.start <= x.index < s.end for x in s.samples) for s in segments)


def test_video_rows_score_static_below_pan(multishot) -> None:
    config = load_config("tiny")
    rows, seconds = process_item(MediaItem(str(multishot.path), "video", "five shots"), config)
    assert seconds == pytest.approx(multishot.shots[-1][2] / 24, rel=0.05)
    kinds = []
    for row in rows:
        middle = (row["start_frame"] + row["end_frame"]) // 2
        kinds.append(next(k for k, s, e in multishot.shots if s <= middle < e))
    motion = {k: [r["motion_flow"] for r, kk in zip(rows, kinds) if kk == k] for k in set(kinds)}
    assert max(motion["static"]) < min(motion["pan"]) / 5
    mv = {k: [r["motion_vectors"] for r, kk in zip(rows, kinds) if kk == k] for k in set(kinds)}
    assert max(mv["static"]) < min(mv["pan"])
    for row in rows:
        assert row["clip_id"].endswith(f":{row['start_frame']}-{row['end_frame']}")
        assert row["caption"] == "five shots" and row["video"][4:8] == b"ftyp"
        assert row["num_frames"] >= 24 and len(row["keyframes"]) == 3


def test_broken_files_become_rejects_not_exceptions(broken) -> None:
    config = load_config("tiny")
    for name in ("zero_byte", "truncated", "text", "audio_only", "one_frame", "tiny", "vfr", "corrupt_middle"):
        try:
            process_item(MediaItem(str(broken[name]), "video"), config)
        except Rejected as rejected:
            assert rejected.stage in ("probe", "decode", "split") and rejected.reason, name
        else:
            assert name == "corrupt_middle", name  # damage can spare whole shots; those clips are fine to keep
    with pytest.raises(Rejected) as rejected:
        process_item(MediaItem(str(broken["text"]).replace(".mp4", ".jpg"), "image"), config)
    assert rejected.value.stage == "image"


def test_buckets() -> None:
    assert aspect_bucket(1920, 1080) == "16:9" and aspect_bucket(1080, 1920) == "9:16" and aspect_bucket(512, 500) == "1:1"
    paper = ([1, 8, 16, 32], [1, 4, 8, 16])
    pairs = {(p["frames"], p["fps"]) for p in frame_fps_pairs(48, 24.0, *paper)}
    assert (32, 16) in pairs and (16, 8) in pairs and (8, 4) in pairs
    assert (32, 8) not in pairs  # 32 frames at 8 fps span 4 s; the clip has 2 s
    assert all(f == 1 or fps <= 24 for f, fps in pairs)
    assert {(p["frames"], p["fps"]) for p in frame_fps_pairs(10, 10.0, *paper)} == {(1, 1), (1, 4), (1, 8), (8, 8)}  # 8 at 4 fps spans 1.75 s
    assert {p["fps"] for p in frame_fps_pairs(48, 24.0, [1, 8], [2, 3])} == {2, 3}  # the config's rates, whatever they are


def test_decisions_name_the_reason_and_balance_strata() -> None:
    scores = pd.DataFrame({
        "aesthetic": [5.0, 2.0, 5.0, 5.0, 6.0, 7.0, np.nan],
        "motion": [0.1, 0.1, 0.0001, 3.0, 0.2, 0.3, 0.1],
        "subject": [0.3, 0.3, 0.3, 0.3, 0.5, 0.1, 0.2],
    })
    keep, reasons = keep_and_reasons(scores, FiltersConfig(min_aesthetic=3.0, min_motion=0.002, max_motion=1.0))
    assert keep.tolist() == [True, False, False, False, True, True, False]
    assert reasons[1].startswith("aesthetic 2.00 < 3") and "too static" in reasons[2] and "too fast" in reasons[3]
    assert reasons[6] == "aesthetic could not be scored"
    scores_only = ["aesthetic", "motion", "subject"]
    weights = balancing_weights(scores, keep, bins=2, columns=scores_only)
    assert weights[~keep].sum() == 0 and abs(weights[keep].mean() - 1) < 1e-6
    common = pd.DataFrame({"aesthetic": [5.0] * 9 + [9.0], "motion": [0.1] * 10, "subject": [0.3] * 10})
    w = balancing_weights(common, np.ones(10, bool), bins=2, columns=scores_only)
    assert w[9] > 5 * w[0]  # the rare stratum is drawn as often as the common one in total
    # camera classes are strata of their own when asked for: a lone tilt among pans
    cameras = common.assign(aesthetic=5.0, camera_motion=["pan_left"] * 9 + ["tilt_up"])
    assert balancing_weights(cameras, np.ones(10, bool), bins=2, columns=scores_only)[9] == 1.0
    w = balancing_weights(cameras, np.ones(10, bool), bins=2, columns=[*scores_only, "camera_motion"])
    assert w[9] == pytest.approx(9 * w[0])


def test_camera_text_and_near_duplicate_filters_name_their_reason() -> None:
    scores = pd.DataFrame({
        "aesthetic": [5.0] * 5, "motion": [0.1] * 5, "subject": [0.3] * 5,
        "camera_motion": ["pan_left", "shaky", None, "static", "pan_left"],
        "text_area": [0.0, 0.0, 0.0, 0.2, np.nan],
        "near_duplicate_of": [None, None, None, None, "abc:0-48"],
    })
    keep, reasons = keep_and_reasons(scores, FiltersConfig(drop_camera=["shaky"], max_text_area=0.1))
    assert keep.tolist() == [True, False, True, False, False]
    assert reasons[1] == "camera_motion shaky is in drop_camera"
    assert reasons[3] == "text_area 0.200 > 0.1"
    assert reasons[4] == "near_duplicate of abc:0-48"  # first, whatever else holds
    keep, reasons = keep_and_reasons(scores, FiltersConfig(keep_camera=["pan_left", "pan_right"]))
    assert keep.tolist() == [True, False, False, False, False]
    assert reasons[2] == "camera_motion unknown is not in keep_camera ['pan_left', 'pan_right']"


FIRST_TRIES: dict[str, int] = {}


def flaky_work(item: MediaItem, config) -> tuple[list[dict], float]:
    """Module-level, so the sandbox's spawned child can import it by name."""
    if item.uri == "hang":
        time.sleep(600)
    if item.uri == "crash":
        os.abort()  # what decord does on some corrupt H.264
    if item.uri == "bug":
        raise KeyError("missing field")
    if item.uri == "broken code":
        return eval("undefined_helper(item)")  # a real NameError, as a bad refactor leaves
    if item.uri == "absent":
        raise FileNotFoundError("no such object")
    if item.uri.startswith("flaky"):  # fails while its marker file exists, then succeeds
        marker = Path(item.uri.split(":", 1)[1])
        if marker.exists():
            marker.unlink()
            raise OSError("AWS Error SLOW_DOWN during GetObject operation: 503")
    if item.uri == "down":
        raise OSError("When reading information for key: AWS Error NETWORK_CONNECTION")
    return [{"ok": item.uri}], 1.5


def test_sandbox_sorts_failures_into_transient_and_terminal(tmp_path) -> None:
    from curation.sandbox import CurationCodeError, Sandbox

    config = load_config("tiny", overrides=["curation.file_timeout_s=6", "curation.max_retries=2",
                                            "curation.retry_backoff_s=0.05"])
    sandbox = Sandbox(config, work=flaky_work)
    marker = tmp_path / "fail-once"
    marker.touch()
    try:
        # one stream: the items after a hang and a crash go on in a fresh child
        uris = ["good", "hang", "crash", "bug", "absent", f"flaky:{marker}", "down", "good2"]
        outcomes = dict(zip(uris, sandbox.run_all([(MediaItem(uri, "video"), 0) for uri in uris])))
        again = sandbox.run_all([(MediaItem("good3", "video"), 2)])
        sandbox._process.kill()  # an idle child lost (the out-of-memory killer): the next unit gets a new one
        sandbox._process.join()
        after_loss = sandbox.run_all([(MediaItem("good4", "video"), 0)])
        with pytest.raises(CurationCodeError, match="undefined_helper"):  # stops the job, rejects nothing
            sandbox.run_all([(MediaItem("good5", "video"), 0), (MediaItem("broken code", "video"), 0)])
    finally:
        sandbox.close()
    good = outcomes["good"]
    assert good.rows == [{"ok": "good"}] and good.video_seconds == 1.5 and good.reject is None
    assert outcomes["good2"].rows == [{"ok": "good2"}]  # the sandbox survives all of the above
    assert again[0].rows == [{"ok": "good3"}] and again[0].attempts == 3  # prior attempts are counted
    assert after_loss[0].rows == [{"ok": "good4"}] and after_loss[0].attempts == 1
    flaky = outcomes[f"flaky:{marker}"]
    assert flaky.rows and flaky.attempts == 2  # failed once, then succeeded
    hang = outcomes["hang"]
    assert "timed out after 6 s" in hang.reject[1] and not hang.retryable and hang.attempts == 1
    crash = outcomes["crash"]
    assert "crashed" in crash.reject[1] and "SIGABRT" in crash.reject[1] and not crash.retryable
    assert crash.attempts == 3  # retried: an abort can be a dying node as well as a bad file
    assert outcomes["bug"].reject == ("worker", "KeyError: 'missing field'") and outcomes["bug"].retryable
    assert outcomes["bug"].attempts == 1  # a defect is not retried in the run, only by the next one
    absent = outcomes["absent"]
    assert absent.reject[0] == "read" and not absent.retryable and absent.attempts == 1
    down = outcomes["down"]
    assert down.retryable and down.attempts == 3 and "after 3 tries" in down.reject[1]


def test_the_workers_malloc_keeps_freed_image_buffers(tmp_path) -> None:
    """``keep_freed_memory`` in a fresh process: decoding the same 640x480 JPEG again and
    again then faults in almost no new pages, where glibc's defaults fault in each decode's
    buffers afresh (the kernel time ``pipeline.allocator`` removes)."""
    import subprocess
    import sys

    picture = tmp_path / "noise.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(picture)
    code = (
        "import resource, sys; import numpy as np; from PIL import Image;"
        "from pipeline.allocator import keep_freed_memory;"
        "kept = keep_freed_memory() if sys.argv[2] == 'kept' else None;"
        "decode = lambda: np.asarray(Image.open(sys.argv[1]).convert('RGB')).copy();"
        "decode(); before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt;"
        "any(decode() is None for _ in range(20));"  # each result freed before the next
        "print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)"
    )

    def faults(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", code, str(picture), mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], float(out[1])

    kept, with_it = faults("kept")
    _, default = faults("default")
    assert kept == "True"  # this machine's C library is glibc
    assert default > 200  # a 0.9 MB buffer is 225 pages
    assert with_it < 0.1 * default, (with_it, default)
