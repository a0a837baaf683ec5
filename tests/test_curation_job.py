"""The curation job end to end through its public interface (``python -m pipeline curate``):
every input lands in exactly one table, re-runs append nothing, a killed run resumes to the
same tables, thresholds change without re-scoring, and the report renders."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import decord
import lance
import pytest

from pipeline.tables import CLIPS, IMAGES, REJECTS
from support.synthetic import write_sample_corpus

ARGS = ["--preset", "tiny", "--quiet", "--set", "curation.commit_every_s=0"]


def _curate(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "curate", *args], capture_output=True, text=True, **kwargs)


def _rows(out: Path, name: str, columns: list[str]) -> list[tuple]:
    if not (out / name / "_versions").is_dir():  # absent, or killed before its first commit
        return []
    table = lance.dataset(str(out / name)).to_table(columns=columns)
    return sorted(zip(*(table.column(c).to_pylist() for c in columns)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    spec = write_sample_corpus(folder, videos=3, seed=0)
    # A file name that is not UTF-8 (a Latin-1 upload): one reject, and the run goes on.
    shutil.copyfile(spec["videos"][0].path, os.fsencode(folder) + "/caf\xe9.mp4".encode("latin-1"))
    return folder, spec


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    folder, _ = corpus
    out = tmp_path_factory.mktemp("out")
    proc = _curate(str(folder), "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    throughput = json.loads((out / "summary.json").read_text())["throughput"]  # before any rerun replaces it
    # several units: the start-up and the rate after it are told apart
    assert 0 < throughput["first_result_s"] < throughput["wall_s"] and throughput["steady_files_per_s"] > 0
    # the work's CPU after start-up, counted where it ran, is a part of the cores' time
    assert 0 < throughput["steady_share_outside_work"] < 1 and throughput["finalize_s"] > 0
    return out


def test_every_input_is_a_clip_row_or_a_reject(corpus, curated) -> None:
    folder, spec = corpus
    clip_sources = {s for (s,) in _rows(curated, CLIPS, ["source"])}
    image_sources = {s for (s,) in _rows(curated, IMAGES, ["source"])}
    rejects = {s: (stage, reason) for s, stage, reason in _rows(curated, REJECTS, ["source", "stage", "reason"])}
    assert not (clip_sources & set(rejects)) and not (image_sources & set(rejects))
    for video in spec["videos"]:
        assert str(video.path) in clip_sources
    for name, path in spec["broken"].items():
        if name == "corrupt_middle" and str(path) in clip_sources:
            continue
        assert str(path) in rejects, name
        assert rejects[str(path)][1], name
    undecodable = rejects[f"{folder}/caf\\xe9.mp4"]
    assert undecodable[0] == "source" and "not valid UTF-8" in undecodable[1]
    manifest_rows = len(lance.dataset(str(curated / IMAGES)).to_table(columns=["source"])) + sum(
        1 for s, (stage, _) in rejects.items() if stage in ("image", "source")
    )
    assert manifest_rows >= 6 + 2  # six good images and two bad rows


def test_clips_match_the_shots_and_decode(corpus, curated) -> None:
    _, spec = corpus
    table = lance.dataset(str(curated / CLIPS)).to_table(
        columns=["clip_id", "source", "start_frame", "end_frame", "num_frames", "caption", "video_width",
                 "video_height", "keep", "drop_reason", "weight", "motion", "frame_fps", "bucket"]
    ).to_pylist()
    for video in spec["videos"]:
        rows = [r for r in table if r["source"] == str(video.path)]
        hard_shots = len(video.cuts) + 1
        assert hard_shots - len(video.dissolves) <= len(rows) <= len(video.shots) + 1
        assert rows[0]["caption"] == Path(video.path).with_suffix(".txt").read_text().strip()
        for cut in video.cuts:  # no clip spans a hard cut
            assert not any(r["start_frame"] < cut - 2 and r["end_frame"] > cut + 2 for r in rows)
        for start, end in video.dissolves:  # nor holds a cross-faded frame
            assert not any(r["start_frame"] < end and r["end_frame"] > start for r in rows)
    for row in table:
        assert row["num_frames"] == row["end_frame"] - row["start_frame"]
        assert row["keep"] == (row["drop_reason"] is None) and (row["weight"] > 0) == row["keep"]
        assert row["bucket"] == "16:9" and row["frame_fps"]
    ds = lance.dataset(str(curated / CLIPS))
    first = ds.to_table(columns=["num_frames", "video_width"], limit=1).to_pylist()[0]
    blob = ds.take_blobs("video", indices=[0])[0]
    with blob as f:
        reader = decord.VideoReader(io.BytesIO(f.read()))
    assert len(reader) == first["num_frames"] and reader[0].shape[1] == first["video_width"]


def test_rerun_appends_nothing_and_thresholds_change_without_rescoring(corpus, curated) -> None:
    folder, _ = corpus
    columns = ["clip_id", "aesthetic", "motion", "subject"]
    before = _rows(curated, CLIPS, columns)
    rejects_before = _rows(curated, REJECTS, ["source"])
    proc = _curate(str(folder), "--out", str(curated), *ARGS, "--set", "curation.filters.min_motion=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(curated, CLIPS, columns) == before
    assert _rows(curated, REJECTS, ["source"]) == rejects_before
    keeps = _rows(curated, CLIPS, ["keep", "drop_reason"])
    assert all(not keep and "motion" in reason for keep, reason in keeps)
    # and back: the original thresholds restore the original decisions
    assert _curate(str(folder), "--out", str(curated), *ARGS).returncode == 0
    assert any(keep for keep, _ in _rows(curated, CLIPS, ["keep", "drop_reason"]))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_tables(corpus, curated, tmp_path) -> None:
    folder, _ = corpus
    out = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "curate", str(folder), "--out", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / CLIPS).exists() or (out / IMAGES).exists():
            break
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(_rows(out, CLIPS, ["clip_id"])) + len(_rows(out, IMAGES, ["image_id"]))
    result = _curate(str(folder), "--out", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, columns in ((CLIPS, ["clip_id", "keep", "weight"]), (IMAGES, ["image_id", "keep"]), (REJECTS, ["source", "stage"])):
        assert _rows(out, name, columns) == _rows(curated, name, columns), name
    assert partial < len(_rows(curated, CLIPS, ["clip_id"])) + len(_rows(curated, IMAGES, ["image_id"]))


def test_report_renders(curated) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", "report", str(curated), "--preset", "tiny"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (curated / "report.html").read_text()
    assert "motion" in html and "aesthetic" in html and "<img" in html
    assert "video-seconds per second" in html and "retryable" in html  # throughput; the rejects' columns


@pytest.mark.slow
def test_a_gpu_scorer_pool_gives_the_same_tables(corpus, curated, tmp_path) -> None:
    """With ``aesthetic_gpus`` the scorer is an actor pool of its own fed by the file workers;
    on a cluster that declares a GPU (Ray schedules by the declaration) it writes what the
    CPU path writes. (The weight-free scorer ignores the device; the LAION one needs CUDA.)"""
    folder, _ = corpus
    out = tmp_path / "gpu"
    script = (
        "import ray, sys; from pipeline.config import load_config; from curation.job import curate;"
        "ray.init(num_cpus=2, num_gpus=1, include_dashboard=False);"
        "config = load_config('tiny', overrides=['curation.scoring.aesthetic_gpus=0.5', 'curation.commit_every_s=0']);"
        "curate([sys.argv[1]], sys.argv[2], config, progress=False)"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(folder), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GpuModelStage" in proc.stderr  # the plan had the GPU models' own pool
    for name, columns in ((CLIPS, ["clip_id", "aesthetic", "keep"]), (IMAGES, ["image_id", "aesthetic"]),
                          (REJECTS, ["source", "stage"])):
        assert _rows(out, name, columns) == _rows(curated, name, columns), name
