"""The peers' curation signals through the CLI on real encoded videos: camera-motion classes,
near-duplicates (re-encoded, cropped, brightened and re-timed copies caught; another shot of
the same scene not), the report's new sections, and ``curate search``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
from PIL import Image

from pipeline.tables import CLIPS, open_curated
from support.synthetic import CameraShot, photo_like, sample_photographs, write_camera_video, write_copy

SIZE = (320, 180)
FRAMES = 48  # 2 s at 24 fps
COPIES = ["original", "copy_reencoded", "copy_cropped", "copy_brighter", "copy_faster"]


def _picture() -> np.ndarray:
    photos = sample_photographs()
    return np.asarray(Image.open(photos[0]).convert("RGB")) if photos else photo_like(600, 900, seed=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One slow pan and four copies of it; two other shots; and another shot of the pan's
    scene (the same photograph, framed closer on its left part)."""
    folder = tmp_path_factory.mktemp("signals")
    picture = _picture()
    original = write_camera_video(folder / "original.mp4", [CameraShot(picture, FRAMES, pan=(0.5, 0.0))],
                                  size=SIZE).path
    write_copy(original, folder / "copy_reencoded.mp4", crf=35)
    write_copy(original, folder / "copy_cropped.mp4", crop=0.04)
    write_copy(original, folder / "copy_brighter.mp4", brightness=25)
    write_copy(original, folder / "copy_faster.mp4", speed=1.25)
    left = picture[:, : picture.shape[1] // 2]
    write_camera_video(folder / "same_scene.mp4", [CameraShot(left, FRAMES, pan=(0.5, 0.0))], size=SIZE)
    write_camera_video(folder / "zoom.mp4", [CameraShot(photo_like(500, 800, seed=5), FRAMES, zoom=0.008)], size=SIZE)
    write_camera_video(folder / "tilt.mp4", [CameraShot(photo_like(500, 800, seed=7), FRAMES, pan=(0.0, -1.5))],
                       size=SIZE)
    return folder


def _curate(corpus: Path, out: Path, *overrides: str) -> None:
    sets = [arg for o in overrides for arg in ("--set", o)]
    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(corpus), "--out", str(out), "--preset",
                          "tiny", "--quiet", *sets], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _clips(out: Path) -> dict[str, dict]:
    rows = open_curated(out / CLIPS).to_table(columns=["clip_id", "source", "camera_motion", "near_duplicate_of",
                                                        "keep", "drop_reason", "aesthetic", "caption_source"])
    return {Path(r["source"]).stem: r for r in rows.to_pylist()}


def _check_groups(clips: dict[str, dict]) -> None:
    assert set(clips) >= set(COPIES) | {"same_scene", "zoom", "tilt"}, sorted(clips)
    kept = [name for name in COPIES if clips[name]["near_duplicate_of"] is None]
    assert len(kept) == 1, {n: clips[n]["near_duplicate_of"] for n in COPIES}
    keeper = clips[kept[0]]
    for name in COPIES:
        if name != kept[0]:
            assert clips[name]["near_duplicate_of"] == keeper["clip_id"], name
            assert not clips[name]["keep"] and clips[name]["drop_reason"] == f"near_duplicate of {keeper['clip_id']}"
            assert clips[name]["aesthetic"] <= keeper["aesthetic"]  # the best copy is the one kept
    for name in ("same_scene", "zoom", "tilt"):
        assert clips[name]["near_duplicate_of"] is None, name


def test_signals_through_the_cli(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _curate(corpus, out)
    clips = _clips(out)
    _check_groups(clips)
    assert clips["original"]["camera_motion"] == "pan_right"
    assert clips["zoom"]["camera_motion"] == "zoom_in"
    assert clips["tilt"]["camera_motion"] == "tilt_up"
    assert {c["caption_source"] for c in clips.values()} == {"none"}  # a folder gives no captions

    # the report shows the new signals
    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", "report", str(out), "--preset", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    page = (out / "report.html").read_text()
    for section in ("camera motion before and after the filters", "its copies", "dropped for near_duplicate",
                    "clips without a caption: <b>8</b>"):
        assert section in page, section

    # search: a clip's copies come first, and a frame of the pan finds the pan's group
    keeper = next(clips[n] for n in COPIES if clips[n]["near_duplicate_of"] is None)
    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", "search", str(out), "--clip-id",
                          keeper["clip_id"], "--top", "4"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    found = {line.split()[1] for line in lines[:-1]}
    assert found == {clips[n]["clip_id"] for n in COPIES} - {keeper["clip_id"]}, lines
    assert Path(lines[-1]).is_file() and "similarity" in Path(lines[-1]).read_text()

    import av

    with av.open(str(corpus / "original.mp4")) as video:
        frame = next(video.decode(video=0)).to_ndarray(format="rgb24")
    Image.fromarray(frame).save(tmp_path / "query.jpg")
    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", "search", str(out), "--image",
                          str(tmp_path / "query.jpg"), "--top", "3", "--sheet", str(tmp_path / "sheet.html")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    nearest = [line.split()[-1] for line in run.stdout.strip().splitlines()[:-1]]
    assert all(Path(n).stem.startswith(("original", "copy_")) for n in nearest), nearest

    bad = subprocess.run([sys.executable, "-m", "pipeline", "curate", "search", str(out), "--clip-id", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no clip 'nope'" in bad.stderr


@pytest.mark.slow
def test_near_duplicates_through_the_vector_index(corpus: Path, tmp_path: Path) -> None:
    """The same groups when the clips table is large enough for an IVF index."""
    out = tmp_path / "out"
    _curate(corpus, out, "curation.near_duplicates.index_min_rows=4")
    indices = lance.dataset(str(out / CLIPS)).list_indices()
    assert any(index["fields"] == ["fingerprint"] for index in indices), indices
    _check_groups(_clips(out))


@pytest.mark.slow
def test_captions_from_a_local_model_through_the_cli(corpus: Path, tmp_path: Path) -> None:
    """Rows without a caption get the model's, credited to it; rows with one keep theirs;
    ``--recaption`` replaces those too; the report counts the sources."""
    from support.synthetic import write_image_manifest
    from tests.test_captioner import write_tiny_blip

    model = write_tiny_blip(tmp_path / "tiny-blip")
    manifest = write_image_manifest(tmp_path / "images", count=4, bad_rows=0)
    out = tmp_path / "out"
    _curate(corpus, out, f"curation.captioning.model={model}", "curation.captioning.max_new_tokens=6")
    clips = _clips(out)
    assert {c["caption_source"] for c in clips.values()} == {"model:tiny-blip"}
    captions = open_curated(out / CLIPS).to_table(columns=["caption"]).column("caption").to_pylist()
    assert all(captions), captions

    _curate(manifest, out, f"curation.captioning.model={model}", "curation.captioning.max_new_tokens=6")
    images = open_curated(out / "images.lance").to_table(columns=["caption", "caption_source"]).to_pylist()
    assert {i["caption_source"] for i in images} == {"input"}
    assert all(i["caption"].startswith(("a coloured object", "a synthetic")) for i in images)

    recaptioned = tmp_path / "recaptioned"
    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(manifest), "--out", str(recaptioned),
                          "--preset", "tiny", "--quiet", "--recaption", "--set", f"curation.captioning.model={model}",
                          "--set", "curation.captioning.max_new_tokens=6"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    images = open_curated(recaptioned / "images.lance").to_table(columns=["caption_source"]).to_pylist()
    assert {i["caption_source"] for i in images} == {"model:tiny-blip"}

    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", "report", str(out), "--preset", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "caption source: model:tiny-blip: 8" in page and "caption source: input: 4" in page


GPU_POOL_RUN = """
import os, sys
import ray
from curation.job import curate
from pipeline.config import load_config
from pipeline.ray_runtime import WORKER_ENV

for key, value in WORKER_ENV.items():
    os.environ.setdefault(key, value)
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # a GPU declared, not present
curate([sys.argv[1]], sys.argv[2], load_config("tiny", overrides=sys.argv[3:]), progress=False)
"""


def _captions(out: Path) -> dict[str, tuple[str, str]]:
    rows = open_curated(out / CLIPS).to_table(columns=["clip_id", "caption", "caption_source"]).to_pylist()
    return {r["clip_id"]: (r["caption"], r["caption_source"]) for r in rows}


@pytest.mark.slow
def test_captions_through_the_gpu_pool_and_after_a_kill_are_the_cpu_runs(corpus: Path, tmp_path: Path) -> None:
    """The captioner with ``captioning.gpus`` runs in the GPU model pool, fed by the file
    workers (on a cluster that declares a GPU it lacks, on the CPU with a warning), and a
    run killed part-way through captions only what it had not written when rerun: both give
    the captions of an uninterrupted CPU run, row for row."""
    from tests.test_captioner import write_tiny_blip

    model = write_tiny_blip(tmp_path / "tiny-blip")
    captioning = [f"curation.captioning.model={model}", "curation.captioning.max_new_tokens=6"]
    reference = tmp_path / "cpu"
    _curate(corpus, reference, *captioning)
    expected = _captions(reference)
    assert len(expected) >= 8 and {source for _, source in expected.values()} == {"model:tiny-blip"}

    pooled = tmp_path / "gpu_pool"
    run = subprocess.run([sys.executable, "-c", GPU_POOL_RUN, str(corpus), str(pooled), *captioning,
                          "curation.captioning.gpus=0.5"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GpuModelStage" in run.stderr and "sees no CUDA device" in run.stderr
    assert _captions(pooled) == expected

    resumed = tmp_path / "resumed"
    sets = [arg for o in [*captioning, "curation.commit_every_s=0"] for arg in ("--set", o)]
    killed = subprocess.Popen([sys.executable, "-m", "pipeline", "curate", str(corpus), "--out", str(resumed),
                               "--preset", "tiny", "--quiet", *sets], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while killed.poll() is None and time.monotonic() < deadline:
        if (resumed / CLIPS / "_versions").is_dir() and lance.dataset(str(resumed / CLIPS)).count_rows() > 0:
            break
        time.sleep(0.1)
    if killed.poll() is None:
        os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    partial = lance.dataset(str(resumed / CLIPS)).count_rows()
    _curate(corpus, resumed, *captioning)
    assert partial < len(expected)
    assert _captions(resumed) == expected


def test_burned_in_subtitles_are_measured_and_filtered_through_the_cli(tmp_path: Path) -> None:
    """Pans over photo-like pictures, two with subtitles burned in and one clean: the
    subtitled clips' text area is above the clean one's, and ``max_text_area`` drops them."""
    from support.overlays import Subtitle, write_overlay_video

    folder = tmp_path / "videos"
    folder.mkdir()
    lines = (("Where were you last night?",), ("I told you, I was at home", "all evening."))
    for i, text in enumerate(lines):
        write_overlay_video(folder / f"subtitled{i}.mp4", photo_like(400, 700, seed=20 + i), seconds=2.0,
                            subtitles=[Subtitle(text)])
    write_overlay_video(folder / "clean.mp4", photo_like(400, 700, seed=30), seconds=2.0)
    out = tmp_path / "out"
    _curate(folder, out, "curation.filters.max_text_area=0.01")
    rows = open_curated(out / CLIPS).to_table(columns=["source", "text_area", "keep", "drop_reason"]).to_pylist()
    by_name = {Path(r["source"]).stem: r for r in rows}
    assert set(by_name) == {"subtitled0", "subtitled1", "clean"}, sorted(by_name)
    assert by_name["clean"]["text_area"] < 0.01 < min(by_name[f"subtitled{i}"]["text_area"] for i in (0, 1)), by_name
    assert by_name["clean"]["keep"], by_name["clean"]
    for i in (0, 1):
        assert by_name[f"subtitled{i}"]["drop_reason"].startswith("text_area "), by_name[f"subtitled{i}"]
