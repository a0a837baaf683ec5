"""Curation throughput against its bounds and against the naive path, side by side.

    python benchmarks/curation.py                      # generated corpus
    python benchmarks/curation.py --corpus DIR         # any folder of videos
    python benchmarks/curation.py --long-seconds 300   # worker memory on a 5-minute 720p video

Figures (all on the same videos, in one run, so ratios survive a noisy machine):
- decode-only bound: decord decoding every frame at the analysis size, nothing else;
- our analysis pass (shots + dissolves + motion + subject + motion vectors, one decode) and
  our full per-file work (analysis + H.264 encoding of every clip);
- the naive path a user would write: PySceneDetect's ``detect()`` per file, then a separate
  full-resolution decode for each scorer (Farneback motion at 2 fps, subject share);
- the whole job (Ray, Lance) in video-seconds per second and per core;
- Farneback vs codec motion vectors: time per video-second, and the rank correlation and
  median ratio of their per-clip scores (both read the same unit, so the ratio should be ~1);
- peak RSS of a worker process on a short and on a long 720p video (memory must stay flat).
The decode-only, analysis and naive passes run ``--repeats`` times, interleaved, and the
fastest run of each counts (every run is kept in the JSON): on a shared machine one run of
each can differ by 2x or more. Writes ``benchmarks/results/curation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# This script shares its name with the package it measures: drop its own folder from the
# import path so `import curation` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "curation.json"


def _videos(folder: Path) -> list[Path]:
    from curation.sources import expand_inputs

    items, _ = expand_inputs([str(folder)])
    return [Path(i.uri) for i in items if i.kind == "video"]


def _usable(videos: list[Path], config) -> list[tuple[Path, object]]:
    """Videos every compared path can read: probed, and fully decodable by decord (broken
    files are curation's job, not a throughput figure's)."""
    import decord

    from curation.probe import Rejected, probe_video

    out = []
    for v in videos:
        try:
            info = probe_video(str(v), config.curation.probe)
            reader = decord.VideoReader(str(v), num_threads=1)
            reader.get_batch(list(range(len(reader))))
        except (Rejected, decord.DECORDError):
            continue
        out.append((v, info))
    return out


def decode_only(videos, config) -> float:
    import decord

    from curation.analysis import analysis_size

    start = time.perf_counter()
    for path, info in videos:
        w, h = analysis_size(info.width, info.height, config.curation.shots.analysis_width)
        reader = decord.VideoReader(str(path), width=w, height=h, num_threads=0)
        for i in range(0, len(reader), 32):
            reader.get_batch(list(range(i, min(i + 32, len(reader)))))
    return time.perf_counter() - start


def analysis_only(videos, config) -> float:
    from curation.analysis import iter_segments

    start = time.perf_counter()
    for path, info in videos:
        for _ in iter_segments(str(path), info, config.curation):
            pass
    return time.perf_counter() - start


def per_file(videos, config) -> float:
    from curation.sources import MediaItem
    from curation.worker import process_item

    start = time.perf_counter()
    for path, _ in videos:
        process_item(MediaItem(str(path), "video"), config)
    return time.perf_counter() - start


def naive(videos) -> float:
    """What a user would write: detect(), then one full decode per scorer."""
    import cv2
    from scenedetect import ContentDetector, detect

    from curation.scorers.motion import sample_motion
    from curation.scorers.subject import subject_share

    start = time.perf_counter()
    for path, info in videos:
        scenes = detect(str(path), ContentDetector())
        step = max(1, int(round(info.fps / 2)))
        for scorer in ("motion", "subject"):
            cap = cv2.VideoCapture(str(path))
            prev, before, index = None, None, 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = bgr[:, :, ::-1]
                if index % step == 0:
                    if scorer == "motion" and prev is not None:
                        sample_motion(before, rgb, info.fps, (prev, step))  # the same motion as ours
                    elif scorer == "subject":
                        subject_share(rgb)
                    prev = rgb
                before = rgb
                index += 1
            cap.release()
        del scenes
    return time.perf_counter() - start


def motion_methods(videos, config) -> dict:
    """Seconds per video-second for each motion method, on top of the same decode."""
    import av

    from curation.analysis import analysis_size
    from curation.scorers.motion import flow_magnitude, frames_with_reference_distances, motion_vector_magnitude

    times = {"decode": 0.0, "decode+motion_vectors": 0.0, "decode+farneback": 0.0}
    seconds = sum(info.duration for _, info in videos)
    for path, info in videos:
        w, h = analysis_size(info.width, info.height, config.curation.shots.analysis_width)
        step = max(1, int(round(info.fps / config.curation.scoring.sample_fps)))
        for mode in times:
            start = time.perf_counter()
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if mode == "decode+motion_vectors":
                    stream.codec_context.options = {"flags2": "+export_mvs"}
                prev = None
                for i, (frame, distances) in enumerate(frames_with_reference_distances(container, stream, info.frame_ticks)):
                    if mode == "decode+motion_vectors":
                        motion_vector_magnitude(frame, *distances)
                    elif mode == "decode+farneback" and i % step == 0:
                        small = frame.to_ndarray(width=w, height=h, format="rgb24")
                        if prev is not None:
                            flow_magnitude(prev, small, step / info.fps)
                        prev = small
            times[mode] += time.perf_counter() - start
    return {k: v / seconds for k, v in times.items()}


def job(folder: Path, out: Path, preset: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(folder), "--out", str(out),
                    "--preset", preset, "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - start


def score_agreement(out: Path) -> dict:
    """Rank correlation and median ratio (vectors over flow) of the two motion scores per clip."""
    import lance

    table = lance.dataset(str(out / "clips.lance")).to_table(columns=["motion_flow", "motion_vectors"]).to_pandas()
    table = table.dropna()
    if len(table) < 3:
        return {"rank_correlation": None, "vectors_over_flow_median": None}
    return {
        "rank_correlation": float(table["motion_flow"].rank().corr(table["motion_vectors"].rank())),
        "vectors_over_flow_median": float((table["motion_vectors"] / table["motion_flow"]).median()),
    }


def fastest(passes: dict, repeats: int) -> dict:
    """Run each pass ``repeats`` times, interleaved so that load changes hit all alike;
    ``{name: [seconds per run]}``."""
    runs: dict = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            runs[name].append(run())
    return runs


def worker_rss(path: Path) -> float:
    """Peak RSS (MB) of a fresh process running one file's whole task.

    Read from the process's own VmHWM: ``getrusage``'s ``ru_maxrss`` survives fork and exec,
    so in a child of this (large) benchmark process it reports the parent's size.
    """
    code = (
        "import sys; from pipeline.config import load_config; from curation.sources import MediaItem;"
        "from curation.worker import process_item;"
        "r = process_item(MediaItem(sys.argv[1], 'video'), load_config('paper'));"
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'));"
        "print(int(hwm.split()[1]) / 1024, len(r.get('rows', [])))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a folder of videos (default: a generated corpus)")
    parser.add_argument("--videos", type=int, default=6, help="videos in the generated corpus")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="length of the long 720p video for the RSS figure")
    parser.add_argument("--short-seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the decode-only, analysis and naive passes")
    args = parser.parse_args()

    from curation.synthetic import write_long_video, write_sample_corpus
    from pipeline.config import load_config

    config = load_config("tiny")
    work = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    folder = args.corpus or work / "corpus"
    if args.corpus is None:
        write_sample_corpus(folder, videos=args.videos, seed=1, size=(1280, 720))
    videos = _usable(_videos(folder), config)
    seconds = sum(info.duration for _, info in videos)
    results: dict = {"video_seconds": seconds, "videos": len(videos)}
    runs = fastest({"decode_only": lambda: decode_only(videos, config), "analysis": lambda: analysis_only(videos, config),
                    "naive": lambda: naive(videos)}, args.repeats)
    for name, times in runs.items():
        results[f"{name}_s"], results[f"{name}_runs_s"] = min(times), times
    results["per_file_s"] = per_file(videos, config)
    results["motion_s_per_video_s"] = motion_methods(videos, config)
    cores = os.cpu_count() or 1  # the job's embedded Ray cluster uses every core
    results["job_s"] = job(folder, work / "out", "tiny")
    results["job_video_s_per_s"] = seconds / results["job_s"]
    results["job_video_s_per_core_s"] = seconds / results["job_s"] / cores
    results["analysis_vs_decode_only"] = results["analysis_s"] / results["decode_only_s"]
    results["naive_vs_analysis"] = results["naive_s"] / results["analysis_s"]
    results["naive_vs_per_file"] = results["naive_s"] / results["per_file_s"]
    results["motion_agreement"] = score_agreement(work / "out")

    short = write_long_video(work / "short.mp4", args.short_seconds)
    long = write_long_video(work / "long.mp4", args.long_seconds)
    results["worker_rss_mb"] = {f"{args.short_seconds:g}s_720p": worker_rss(short.path),
                                f"{args.long_seconds:g}s_720p": worker_rss(long.path)}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(
        f"{len(videos)} videos, {seconds:.0f} video-s | decode-only {results['decode_only_s']:.1f} s, analysis "
        f"{results['analysis_s']:.1f} s ({results['analysis_vs_decode_only']:.2f}x), per-file {results['per_file_s']:.1f} s, "
        f"naive {results['naive_s']:.1f} s ({results['naive_vs_analysis']:.2f}x our analysis, "
        f"{results['naive_vs_per_file']:.2f}x our analysis + encoding) | job {results['job_video_s_per_s']:.1f} "
        f"video-s/s ({results['job_video_s_per_core_s']:.1f} per core) | motion s/video-s {results['motion_s_per_video_s']} "
        f"agreement {results['motion_agreement']} | worker RSS {results['worker_rss_mb']}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
