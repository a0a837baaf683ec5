"""How the curation job scales: fixed overhead, marginal cost, driver memory, and images.

    python benchmarks/curation_scale.py                          # 8 / 32 / 128 videos of ~10 s at 720p
    python benchmarks/curation_scale.py --videos 4 8 16 --seconds 5 --images 600 400   # quicker

Figures, all measured in one run on the same machine (ratios survive a noisy one):
- each corpus curated by the CLI, as a user runs it (fresh output folder): wall time and
  the driver's peak RSS (sampled every 0.1 s); every corpus but the largest, and each image
  count, ``--repeats`` times (2), the fastest run kept and every run's time written;
- the intercept (fixed overhead) and the slope (seconds per video-second) of the job's wall
  time between the two largest corpora; the intercept is a fit of two noisy points (it
  moved from 8.6 s to 18.9 s between two runs of one commit), so the fixed overhead is
  also measured directly: the CLI on a manifest of one small image, three times;
- the cost of the same per-file work (probe, analysis, split, clip encoding, aesthetic) run
  alone in one process over the distinct files, in CPU seconds per video-second (process
  time, all threads: the decoder and encoder use several, so wall time would flatter it),
  with OpenCV single-threaded as in the workers. The job's cost per video-second is
  ``slope x cores`` core-seconds; its target is at most 1.3x the work alone;
- the same work split over one process per core, started together, in wall seconds: what
  this machine delivers with every core on the work and nothing else. Two busy loops on
  the 2-core virtual machine ran at 1.75x one, so ``cores`` times the one-process rate is
  more than any pipeline here can reach; the job's slope and image rates are set against
  this too (``slope_over_parallel_alone``, ``share_outside_vs_parallel_alone``);
- the driver's peak RSS at the largest corpus against the second largest (target <= 1.1x);
- images: small (160x120) and larger (640x480) generated JPEGs in a manifest, each curated
  at a third of the count and at the full count: the overall images/s, the marginal images/s
  (the slope between the two, which leaves out the fixed overhead that the intercept already
  reports), and the share of the marginal core-seconds spent outside decoding and scoring
  (``1 - alone CPU per image / (marginal seconds per image x cores)``; target <= 30%); the
  same from the job's own rate after its first unit (``steady_images_per_s`` in its
  summary), which the two runs' start-up noise does not reach. The counts (12,000 and
  6,000) keep the difference between the two runs several seconds long: with 1,000 and
  3,000 small images it had shrunk to under a second, less than the 1-3 s by which two
  runs' start-ups differ, and the marginal rate came out faster than the work alone;
- the same share counted inside each job (``in_job_share_outside_work``, and
  ``steady_share_outside_work`` in every job's throughput): from the first unit's start to
  the last result, the cores' time less the per-file work's and the scoring's CPU seconds,
  as the sandboxes and scorers measured them. The comparisons with the work alone set two runs minutes apart against
  each other, and this machine's speed drifts by 20% in minutes (the work alone gave 505
  and 606 small images per CPU-second in two runs of one day); this one does not;
- with ``--two-node``: the second-largest corpus again on a local two-node cluster
  (``pipeline.local_cluster``, each node with half the cores), its wall time, the nodes its
  tasks ran on, and whether its tables equal the single-node run's.
The corpora are built from a few distinct generated multi-shot videos, remuxed (no
re-encode) with a distinct metadata tag each, so every file has its own bytes (no dedupe)
and generating 128 videos costs little. Writes ``benchmarks/results/curation_scale.json``.
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
from typing import Callable

# This script's folder holds `curation.py` too: keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "curation_scale.json"
DISTINCT = 8  # distinct generated videos; the rest are remuxed copies


def _distinct_videos(folder: Path, count: int, seconds: float) -> list[Path]:
    from support.synthetic import ShotSpec, write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    kinds = ["pan", "moving_shape", "texture", "static", "pan"]
    for v in range(count):
        shot_frames = int(seconds * 24 / 3)
        shots = [ShotSpec(kinds[(v + s) % len(kinds)], shot_frames, seed=v * 10 + s) for s in range(3)]
        paths.append(write_video(folder / f"distinct{v}.mp4", shots, size=(1280, 720)).path)
    return paths


def _remux(source: Path, target: Path, tag: str) -> None:
    """A copy of ``source`` with its own bytes: the same packets, a different comment."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        out.metadata["comment"] = tag
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


def _durations(paths: list[Path]) -> list[float]:
    from curation.probe import probe_video
    from pipeline.config import load_config

    probe = load_config("paper").curation.probe
    return [probe_video(str(p), probe).duration for p in paths]


def build_corpus(folder: Path, distinct: list[Path], count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _remux(distinct[i % len(distinct)], folder / f"video{i:04d}.mp4", f"copy {i}")
    return folder


def run_job(inputs: Path, out: Path, env: dict[str, str] | None = None) -> dict:
    """The CLI on ``inputs``: wall seconds, the driver's peak RSS (MB), and its summary."""
    import psutil

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "curate", str(inputs), "--out", str(out),
                             "--preset", "paper", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    driver, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    if proc.wait() != 0:
        raise SystemExit(f"curate failed on {inputs}:\n{proc.stderr.read()[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(time.monotonic() - started, 2), "driver_peak_rss_mb": round(peak, 1),
            "this_run": summary["this_run"], "throughput": summary["throughput"]}


def best_of(runs: int, inputs: Path, out: Path) -> dict:
    """The CLI on ``inputs`` ``runs`` times, each into a fresh folder: the fastest run, with
    every run's wall time. The machine's noise only ever slows a run (the same 12,000-image
    job took 23.0 s and 26.7 s within minutes), so the fastest is the best estimate of the
    job's own cost, and a fit of two points is only as good as its points."""
    done = [run_job(inputs, out.with_name(f"{out.name}_{k}")) for k in range(runs)]
    best = min(done, key=lambda job: job["wall_s"])
    return {**best, "wall_s_runs": [job["wall_s"] for job in done]}


def work_alone(paths: list[Path], kind: str, ready: Callable[[], None] = lambda: None) -> float:
    """CPU seconds (this process, all its threads) of the per-file work and aesthetic
    scoring over ``paths``, no Ray, OpenCV on one thread as in the workers. ``ready`` is
    called once imports and the scorer's set-up are done, just before the timed loop."""
    import cv2
    import numpy as np

    from pipeline.allocator import keep_freed_memory
    from curation.keyframes import decode_jpeg
    from curation.probe import Rejected
    from curation.scorers.aesthetic import build_aesthetic_scorer
    from curation.sources import MediaItem
    from curation.worker import process_item
    from pipeline.config import load_config

    cv2.setNumThreads(1)
    keep_freed_memory()  # the workers' malloc settings (pipeline.allocator)
    config = load_config("paper")
    scorer = build_aesthetic_scorer(None, None)
    ready()
    started_cpu = time.process_time()
    for path in paths:
        try:
            rows, _ = process_item(MediaItem(str(path), kind), config)
        except Rejected:  # the work was done all the same; the job does it too
            continue
        for row in rows:
            scorer(np.stack([decode_jpeg(f) for f in row["keyframes"]]))
    return time.process_time() - started_cpu


def _work_alone_shard(shard: tuple[list[Path], str], ready: Callable[[], None]) -> float:
    return work_alone(*shard, ready=ready)


def work_alone_parallel(paths: list[Path], kind: str, processes: int) -> float:
    """Wall seconds of the same work split over ``processes`` processes that start together
    (``support.together``): what the machine delivers with every core busy on the work and
    nothing else, which the job is held to next to the one-process CPU figure."""
    from support.together import run_together

    return run_together(_work_alone_shard, [(paths[k::processes], kind) for k in range(processes)])[0]


def image_corpus(folder: Path, count: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size[0])
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    lines = ["path,caption"]
    for i in range(count):
        a, b, c = rng.uniform(0.01, 0.08, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b - i), np.sin((xx + yy) * c)], -1)
        noise = rng.normal(0, 0.15, base.shape)
        pixels = ((base + noise) * 0.5 + 0.5).clip(0, 1) * 255
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        lines.append(f"{path},generated picture {i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _one_image(root: Path) -> Path:
    """A manifest of one small image: a job on it is the fixed overhead alone (start-up,
    planning, one worker's start, finalize, shut-down), measured rather than fitted."""
    return image_corpus(root / "one_image", 1, (160, 120))


def image_figures(root: Path, name: str, count: int, size: tuple[int, int], cores: int, repeats: int) -> dict:
    """A third of ``count`` images and all of them, each curated by the CLI (the fastest of
    ``repeats`` runs); the marginal rate between the two, and the work alone on the same files."""
    small_count = max(1, count // 3)
    manifest = image_corpus(root / name, count, size)
    lines = manifest.read_text().splitlines()
    part = manifest.with_name("part.csv")
    part.write_text("\n".join(lines[:1 + small_count]) + "\n")
    first, full = best_of(repeats, part, root / f"out_{name}_part"), best_of(repeats, manifest, root / f"out_{name}")
    marginal_s = (full["wall_s"] - first["wall_s"]) / (count - small_count)
    paths = [Path(line.split(",")[0]) for line in lines[1:]]
    alone_cpu_per_image = work_alone(paths, "image") / count
    alone_parallel_per_image = work_alone_parallel(paths, "image", cores) / count
    figures = {
        "images": [small_count, count], "wall_s": [first["wall_s"], full["wall_s"]],
        "wall_s_runs": [first["wall_s_runs"], full["wall_s_runs"]],
        "finalize_s": [first["throughput"]["finalize_s"], full["throughput"]["finalize_s"]],
        "driver_peak_rss_mb": full["driver_peak_rss_mb"],
        "images_per_s": round(count / full["wall_s"], 1),
        "intercept_s": round(full["wall_s"] - marginal_s * count, 2),
        "marginal_images_per_s": round(1 / marginal_s, 1),
        "marginal_images_per_s_per_core": round(1 / marginal_s / cores, 1),
        "alone_images_per_cpu_s": round(1 / alone_cpu_per_image, 1),
        "share_outside_decode_and_score": round(1 - alone_cpu_per_image / (marginal_s * cores), 3),
        "alone_parallel_images_per_s": round(1 / alone_parallel_per_image, 1),
        "share_outside_vs_parallel_alone": round(1 - alone_parallel_per_image / marginal_s, 3),
        "pipeline_images_per_s": full["throughput"]["images_per_s"],
    }
    # Counted inside the job itself: the share of the cores' time after start-up outside
    # the work's and the scoring's own CPU seconds (no other run to drift against).
    figures["in_job_share_outside_work"] = full["throughput"].get("steady_share_outside_work")
    steady = full["throughput"].get("steady_images_per_s")  # the job's own rate after its first unit
    if steady:
        figures["steady_images_per_s"] = steady
        figures["steady_share_outside_decode_and_score"] = round(1 - alone_cpu_per_image * steady / cores, 3)
    print(name, figures, flush=True)
    return figures


def two_node_run(root: Path, corpus: Path, single_out: Path, cores: int) -> dict:
    """``corpus`` curated again on a local two-node cluster: wall time, the nodes its
    tasks ran on, and whether its tables equal the single-node run's."""
    import lance

    from pipeline.local_cluster import local_cluster

    out = root / "out_two_node"
    with local_cluster(root / "cluster_logs", cpus_per_node=max(1, cores // 2)) as cluster:
        job = run_job(corpus, out, env={**cluster.env, "RAY_ADDRESS": cluster.gcs})  # the env holds its token
        tasks = cluster.state("tasks", detail=True, limit=10_000)
        nodes = {n.node_id for n in cluster.state("nodes")}
        used = {t.node_id for t in tasks if t.node_id}
    same = {}
    for name, columns in (("clips.lance", ["clip_id", "keep", "weight", "aesthetic"]),
                          ("rejects.lance", ["source", "stage"])):
        here, there = (sorted(map(str, lance.dataset(str(d / name)).to_table(columns=columns).to_pylist()))
                       for d in (single_out, out))
        same[name] = here == there
    figures = {"wall_s": job["wall_s"], "nodes": len(nodes), "nodes_with_tasks": len(used & nodes),
               "tables_equal_single_node": same, "throughput": job["throughput"]}
    print("two nodes", figures, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[8, 32, 128], help="corpus sizes (videos)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--images", type=int, nargs=2, default=[12000, 6000], help="small and larger images")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each job but the largest, the fastest kept (the fit's points)")
    parser.add_argument("--work-dir", type=Path, help="keep the corpora here (default: a temporary folder)")
    parser.add_argument("--two-node", action="store_true", help="also run the second-largest corpus on two local nodes")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work_dir or Path(tmp)
        distinct = _distinct_videos(root / "distinct", min(DISTINCT, max(args.videos)), args.seconds)
        sizes = sorted(args.videos)
        jobs, corpora = {}, {}
        for count in sizes:
            corpora[count] = build_corpus(root / f"videos{count}", distinct, count)
            # the largest corpus once: its noise reaches the intercept divided by its size ratio
            jobs[count] = best_of(1 if count == sizes[-1] else args.repeats, corpora[count], root / f"out{count}")
            print(f"{count} videos: {jobs[count]['wall_s']} s, driver {jobs[count]['driver_peak_rss_mb']} MB", flush=True)
        (mid, large) = sizes[-2:]
        durations = _durations(distinct)
        seconds = {n: sum(durations[i % len(durations)] for i in range(n)) for n in sizes}
        slope = (jobs[large]["wall_s"] - jobs[mid]["wall_s"]) / (seconds[large] - seconds[mid])
        intercept = jobs[mid]["wall_s"] - slope * seconds[mid]
        alone_cpu_per_video_s = work_alone(distinct, "video") / sum(durations)
        alone_parallel_per_video_s = work_alone_parallel(distinct, "video", cores) / sum(durations)
        one_input = [run_job(_one_image(root), root / f"out_one_{k}")["wall_s"] for k in range(3)]
        images = {name: image_figures(root, name, count, size, cores, args.repeats) for name, count, size in
                  (("small_160x120", args.images[0], (160, 120)), ("large_640x480", args.images[1], (640, 480)))}
        two_node = two_node_run(root, corpora[mid], root / f"out{mid}_0", cores) if args.two_node else None
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": cores,
        "video_seconds_each": args.seconds,
        "jobs": {str(n): jobs[n] for n in sizes},
        "intercept_s": round(intercept, 2),
        "slope_s_per_video_s": round(slope, 4),
        "job_core_s_per_video_s": round(slope * cores, 4),
        "alone_cpu_s_per_video_s": round(alone_cpu_per_video_s, 4),
        "slope_over_alone": round(slope * cores / alone_cpu_per_video_s, 3),
        "alone_parallel_s_per_video_s": round(alone_parallel_per_video_s, 4),
        "slope_over_parallel_alone": round(slope / alone_parallel_per_video_s, 3),
        "one_input_wall_s": one_input,
        "driver_rss_largest_over_second": round(jobs[large]["driver_peak_rss_mb"] / jobs[mid]["driver_peak_rss_mb"], 3),
        "images": images,
        "two_node": two_node,
        "targets": {"intercept_s": "<= 15", "slope_over_alone": "<= 1.3", "driver_rss_largest_over_second": "<= 1.1",
                    "share_outside_decode_and_score": "<= 0.3",
                    "small marginal_images_per_s": ">= 400 on 2 cores"},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
