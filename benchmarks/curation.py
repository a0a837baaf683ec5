"""Curation throughput against its bounds and against the naive path, side by side.

    python benchmarks/curation.py                      # generated corpora
    python benchmarks/curation.py --corpus DIR         # any folder of videos instead of the 720p one
    python benchmarks/curation.py --pans 0             # without the low-resolution photo corpus
    python benchmarks/curation.py --long-seconds 300   # worker memory on a 5-minute 720p video

Figures (all on the same videos, in one run, so ratios survive a noisy machine), the first
three on each of two corpora side by side: generated multi-shot 720p videos (or ``--corpus``),
and 3 s camera moves over photographs at the base stage's 448x256, where decoding is cheap
and the per-frame work of the detectors and scorers weighs most:
- decode-only bound: decord decoding every frame at the analysis size, nothing else;
- our analysis pass (shots + dissolves + motion + subject + motion vectors, one decode), and
  the same without the dissolve detector (what that detector costs);
- the naive path a user would write: PySceneDetect's ``detect()`` per file, then a separate
  full-resolution decode for each scorer (Farneback motion at 2 fps, subject share);
- our full per-file work (analysis + H.264 encoding of every clip);
- the whole job (Ray, Lance) in video-seconds per second and per core;
- Farneback vs codec motion vectors: time per video-second, and the rank correlation and
  median ratio of their per-clip scores (both read the same unit, so the ratio should be ~1);
- peak RSS of a worker process on a short and on a long 720p video (memory must stay flat);
- the per-sample signals of the analysis pass (camera model, fingerprint, text area): CPU
  seconds per video-second and share of the pass, on both corpora; and the near-duplicate
  search over the job's clips table;
- the near-duplicate finder on ``--near-duplicate-rows`` planted fingerprints, exact (one
  partition) and partitioned (``near_duplicate_scale``).
The decode-only, analysis and naive passes run ``--repeats`` times, interleaved, and the
fastest run of each counts (every run is kept in the JSON): on a shared machine one run of
each can differ by 2x or more. Each pass is timed on the wall clock and in process CPU time:
decord decodes on several threads and our pass on one (a worker per core in the job, OpenCV
single-threaded as there), so the CPU ratio is the per-core cost. The decode-only and
analysis passes are also timed with the files split over one process per core, started
together (``*_all_cores``): the ratio a node running a worker per core sees, where decord's
threads find no idle core. Writes ``benchmarks/results/curation.json``.
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


PAN_SIZE = (448, 256)
PAN_MOVES = (  # per frame, in pixels of the 256 px analysis width; zoom as a relative change of scale
    {"pan": (0.5, 0.0)}, {"pan": (1.0, 0.0)}, {"pan": (-2.0, 0.0)}, {"pan": (0.0, 1.0)},
    {"zoom": 0.005}, {"zoom": -0.005}, {"zoom": 0.01}, {"pan": (1.6, -1.2)},
)


def write_photo_pans(folder: Path, videos: int, seconds: float = 3.0, fps: int = 24) -> None:
    """``videos`` single-shot camera moves over photographs at ``PAN_SIZE``: the photographs
    installed packages ship (``sample_photographs``), then photo-like pictures, each with
    the next of ``PAN_MOVES``. The same arguments give the same files."""
    import numpy as np
    from PIL import Image

    from support.synthetic import CameraShot, photo_like, sample_photographs, write_camera_video

    folder.mkdir(parents=True, exist_ok=True)
    real = [np.asarray(Image.open(p).convert("RGB")) for p in sample_photographs()]
    scale = PAN_SIZE[0] / 256
    for i in range(videos):
        picture = real[i] if i < len(real) else photo_like(600, 900, seed=100 + i)
        move = PAN_MOVES[i % len(PAN_MOVES)]
        pan = tuple(v * scale for v in move.get("pan", (0.0, 0.0)))
        shot = CameraShot(picture, round(seconds * fps), pan=pan, zoom=move.get("zoom", 0.0))
        write_camera_video(folder / f"pan_{i:03d}.mp4", [shot], fps=fps, size=PAN_SIZE)


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


def analysis_only(videos, config, dissolves: bool = True) -> float:
    from dataclasses import replace

    from curation.analysis import iter_segments

    curation = config.curation
    if not dissolves:
        curation = replace(curation, split=replace(curation.split, dissolves=False))
    start = time.perf_counter()
    for path, info in videos:
        for _ in iter_segments(str(path), info, curation):
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
                        sample_motion(before, rgb, info.fps, (prev, step))  # the same motion (and flow field) as ours
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
    from curation.scorers.motion import frames_with_reference_distances, motion_vector_magnitude
    from pipeline.flow import flow_magnitude

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
    ``{name: [(wall seconds, CPU seconds) per run]}``."""
    runs: dict = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            cpu = time.process_time()
            wall = run()
            runs[name].append((wall, time.process_time() - cpu))
    return runs


def _pass_on_shard(shard: tuple[str, list, object], ready) -> None:
    """One process's share of an all-cores pass: set up as the workers are, warm up on the
    shard's first file, then the pass over the shard."""
    import cv2

    from pipeline.allocator import keep_freed_memory

    name, videos, config = shard
    cv2.setNumThreads(1)
    keep_freed_memory()
    run = {"decode_only": decode_only, "analysis": analysis_only}[name]
    run(videos[:1], config)
    ready()
    run(videos, config)


def all_cores(videos, config, repeats: int) -> dict:
    """The decode-only and analysis passes with the files split over one process per core,
    started together (``support.together``), ``repeats`` times interleaved: each run's wall
    seconds. What a node running a worker per core delivers; decord's extra threads find no
    idle core there."""
    from support.together import run_together

    cores = os.cpu_count() or 1
    runs: dict = {"decode_only": [], "analysis": []}
    for _ in range(repeats):
        for name, walls in runs.items():
            walls.append(run_together(_pass_on_shard, [(name, videos[k::cores], config) for k in range(cores)])[0])
    return runs


def compare_passes(videos, config, repeats: int) -> dict:
    """The decode-only, analysis and naive passes on one corpus, and their ratios."""
    runs = fastest({
        "decode_only": lambda: decode_only(videos, config),
        "analysis": lambda: analysis_only(videos, config),
        "analysis_no_dissolves": lambda: analysis_only(videos, config, dissolves=False),
        "naive": lambda: naive(videos),
    }, repeats)
    out: dict = {"video_seconds": sum(info.duration for _, info in videos), "videos": len(videos),
                 "sizes": sorted({f"{info.width}x{info.height}" for _, info in videos})}
    for name, times in runs.items():
        out[f"{name}_s"], out[f"{name}_cpu_s"] = min(w for w, _ in times), min(c for _, c in times)
        out[f"{name}_runs_s"] = [w for w, _ in times]
    out["analysis_vs_decode_only"] = out["analysis_s"] / out["decode_only_s"]
    out["analysis_vs_decode_only_cpu"] = out["analysis_cpu_s"] / out["decode_only_cpu_s"]
    for name, walls in all_cores(videos, config, repeats).items():
        out[f"{name}_all_cores_s"], out[f"{name}_all_cores_runs_s"] = min(walls), walls
    out["analysis_vs_decode_only_all_cores"] = out["analysis_all_cores_s"] / out["decode_only_all_cores_s"]
    out["dissolves_share_of_analysis"] = 1 - out["analysis_no_dissolves_cpu_s"] / out["analysis_cpu_s"]
    out["naive_vs_analysis"] = out["naive_s"] / out["analysis_s"]
    return out


def signal_costs(videos, config) -> dict:
    """CPU seconds per video-second of each signal the analysis pass computes per sample for
    curation's filters beyond motion and subject (camera model, fingerprint, text area),
    timed inside one analysis pass by wrapping the functions the pass calls, and their share
    of that pass."""
    from collections import Counter

    import curation.analysis as analysis

    spent: Counter = Counter()

    def timed(name: str, fn):
        def call(*args, **kwargs):
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - started
        return call

    scoring = config.curation.scoring
    detector = analysis.text_detector(scoring.text_weights, scoring.text_width)
    originals = {name: getattr(analysis, name) for name in ("fit_global_motion", "frame_fingerprint", "text_detector")}
    analysis.fit_global_motion = timed("camera", originals["fit_global_motion"])
    analysis.frame_fingerprint = timed("fingerprint", originals["frame_fingerprint"])
    analysis.text_detector = lambda weights, width: timed("text_area", detector)
    try:
        started = time.process_time()
        analysis_only(videos, config)
        total = time.process_time() - started
    finally:
        for name, fn in originals.items():
            setattr(analysis, name, fn)
    seconds = sum(info.duration for _, info in videos)
    out = {"analysis_cpu_s_per_video_s": total / seconds}
    for name in ("camera", "fingerprint", "text_area"):
        out[f"{name}_cpu_s_per_video_s"] = spent[name] / seconds
        out[f"{name}_share_of_analysis"] = spent[name] / total
    return out


def near_duplicate_cost(out: Path, config) -> dict:
    """Seconds the near-duplicate search takes over the job's clips table, per clip."""
    import lance

    from curation.near_duplicates import near_duplicates
    from pipeline.tables import CLIPS

    clips = lance.dataset(str(out / CLIPS)).count_rows()
    started = time.perf_counter()
    copies = near_duplicates(out / CLIPS, config.curation.near_duplicates)
    return {"clips": clips, "seconds": time.perf_counter() - started, "copies": len(copies)}


def near_duplicate_scale(folder: Path, rows: int, copies: int = 100) -> dict:
    """The near-duplicate finder on a clips table of ``rows`` fingerprints: random unit
    vectors, ``copies`` of which have a copy at cosine 0.97
    (``support.synthetic.write_planted_fingerprints``). Seconds for the exact pass (one
    partition) and for the partitioned one (Lance's IVF k-means and the index for search
    included), and whether each finds exactly the planted copies. Random vectors spread
    evenly, which suits partitions better than real fingerprints, which crowd together; Ray
    is not running, so everything runs in this process."""
    from curation.near_duplicates import near_duplicates
    from pipeline.config.schema import NearDuplicatesConfig
    from support.synthetic import write_planted_fingerprints

    figures: dict = {"rows": rows, "planted_copies": copies}
    for name, index_min_rows in (("exact", rows + 1), ("partitioned", 1)):
        uri = folder / f"near_duplicates_{name}.lance"
        planted = write_planted_fingerprints(uri, rows, copies)
        started = time.perf_counter()
        found = near_duplicates(uri, NearDuplicatesConfig(index_min_rows=index_min_rows))
        figures[f"{name}_s"] = time.perf_counter() - started
        figures[f"{name}_exact"] = found == planted
    print("near-duplicates at scale:", figures, flush=True)
    return figures


def worker_rss(path: Path) -> float:
    """Peak RSS (MB) of a fresh process running one file's whole task.

    Read from the process's own VmHWM: ``getrusage``'s ``ru_maxrss`` survives fork and exec,
    so in a child of this (large) benchmark process it reports the parent's size.
    """
    code = (
        "import sys; from pipeline.config import load_config; from curation.sources import MediaItem;"
        "from curation.worker import process_item; from pipeline.allocator import keep_freed_memory;"
        "keep_freed_memory();"  # as the sandbox's child does
        "rows, _ = process_item(MediaItem(sys.argv[1], 'video'), load_config('paper'));"
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'));"
        "print(int(hwm.split()[1]) / 1024, len(rows))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a folder of videos (default: a generated 720p corpus)")
    parser.add_argument("--videos", type=int, default=6, help="videos in the generated 720p corpus")
    parser.add_argument("--pans", type=int, default=24, help="3 s photo pans in the 448x256 corpus (0: none)")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="length of the long 720p video for the RSS figure")
    parser.add_argument("--short-seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the decode-only, analysis and naive passes")
    parser.add_argument("--near-duplicate-rows", type=int, default=100_000,
                        help="fingerprints in the near-duplicate finder's scale test, exact against partitioned (0: skip)")
    args = parser.parse_args()

    import cv2

    from pipeline.allocator import keep_freed_memory
    from support.synthetic import write_long_video, write_sample_corpus

    cv2.setNumThreads(1)  # as in the curation workers: the pool, one per core, is the parallelism
    keep_freed_memory()  # and their malloc settings (pipeline.allocator)
    from pipeline.config import load_config

    config = load_config("tiny")
    work = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    folder = args.corpus or work / "corpus"
    if args.corpus is None:
        write_sample_corpus(folder, videos=args.videos, seed=1, size=(1280, 720))
    videos = _usable(_videos(folder), config)
    seconds = sum(info.duration for _, info in videos)
    corpora = {"given" if args.corpus else "generated_720p": compare_passes(videos, config, args.repeats)}
    if args.pans:
        write_photo_pans(work / "pans", args.pans)
        corpora["photo_pans_448x256"] = compare_passes(_usable(_videos(work / "pans"), config), config, args.repeats)
    results: dict = {"corpora": corpora, "video_seconds": seconds, "videos": len(videos)}
    results["signals"] = {name: signal_costs(_usable(_videos(path), config), config)
                          for name, path in (("720p", folder), ("pans", work / "pans")) if path.exists()}
    results["per_file_s"] = per_file(videos, config)
    results["motion_s_per_video_s"] = motion_methods(videos, config)
    cores = os.cpu_count() or 1  # the job's embedded Ray cluster uses every core
    results["job_s"] = job(folder, work / "out", "tiny")
    results["job_video_s_per_s"] = seconds / results["job_s"]
    results["job_video_s_per_core_s"] = seconds / results["job_s"] / cores
    main_corpus = next(iter(corpora.values()))
    results["naive_vs_per_file"] = main_corpus["naive_s"] / results["per_file_s"]
    results["motion_agreement"] = score_agreement(work / "out")
    results["near_duplicates"] = near_duplicate_cost(work / "out", config)
    if args.near_duplicate_rows:
        results["near_duplicates_at_scale"] = near_duplicate_scale(work, args.near_duplicate_rows)

    short = write_long_video(work / "short.mp4", args.short_seconds)
    long = write_long_video(work / "long.mp4", args.long_seconds)
    results["worker_rss_mb"] = {f"{args.short_seconds:g}s_720p": worker_rss(short.path),
                                f"{args.long_seconds:g}s_720p": worker_rss(long.path)}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    for name, c in corpora.items():
        print(
            f"{name}: {c['videos']} videos, {c['video_seconds']:.0f} video-s | decode-only {c['decode_only_s']:.1f} s, "
            f"analysis {c['analysis_s']:.1f} s ({c['analysis_vs_decode_only']:.2f}x, CPU "
            f"{c['analysis_vs_decode_only_cpu']:.2f}x, every core busy {c['analysis_vs_decode_only_all_cores']:.2f}x; "
            f"dissolves {c['dissolves_share_of_analysis']:.0%} of it), naive "
            f"{c['naive_s']:.1f} s ({c['naive_vs_analysis']:.2f}x our analysis)"
        )
    print(
        f"per-file {results['per_file_s']:.1f} s (naive {results['naive_vs_per_file']:.2f}x our analysis + encoding) | "
        f"job {results['job_video_s_per_s']:.1f} video-s/s ({results['job_video_s_per_core_s']:.1f} per core) | motion "
        f"s/video-s {results['motion_s_per_video_s']} agreement {results['motion_agreement']} | worker RSS "
        f"{results['worker_rss_mb']}"
    )
    for name, costs in results["signals"].items():
        print(f"signals on {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in costs.items()))
    print(f"near-duplicate search: {results['near_duplicates']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
