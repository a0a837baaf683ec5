"""Training throughput, memory, micro-batch sizing and data planning, side by side.

    python benchmarks/training.py                        # every section, tiny preset, 2 CPU workers
    python benchmarks/training.py --sections batches     # one section: zero, loaders, batches, plans
    python benchmarks/training.py --preset small         # the mid-size model (slow on a CPU)

Each training case is a real ``i2vgen train`` run on a freshly curated synthetic corpus;
its figures come from the run's own ``metrics.jsonl`` (rank 0, the last log window, which
leaves the first steps' warm-up out).
- ``zero``: samples/s, the share of time spent waiting for data, the model states each
  rank holds (parameters between steps, gradients when backward returns, optimizer state:
  what each ZeRO stage partitions) and the worker's peak RSS, for ZeRO 1, 2 and 3.
- ``loaders``: the same ZeRO-2 run with the frozen encoders on the trainers decoding media
  (``train.encoded=never``) and on the tensors ``i2vgen encode`` stored
  (``train.encoded=require``), with the encode pass's own time.
- ``batches``: for each frame count alone (1, 8, 16, 32), samples/s and tokens/s at the
  fixed micro-batch and at the token budget that the fixed micro-batch of 32 frames fills
  (``train.tokens_per_micro_batch``: equal activation memory), and the ratio; the workers'
  peak RSS beside them.
- ``plans``: for catalogs of 10^4, 10^5 and 10^6 clip rows (generated Lance tables of the
  catalog's columns), in a fresh process each: the driver's time and RSS growth for its
  checks and for putting the catalog in the object store, and a loader's time to build
  its ``Planner`` and to plan 1,000 micro-batches.
Writes ``benchmarks/results/training.json`` (the sections run, merged into the last file).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This script shares its name with the package it measures: keep the package importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "training.json"
PAPER_FRAMES = ["train.frame_counts=[1,8,16,32]", "train.frame_weights=[1,1,1,5]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sections", default="zero,loaders,batches,plans")
    parser.add_argument("--catalog-rows", default="10000,100000,1000000")
    parser.add_argument("--measure-plans", help=argparse.SUPPRESS)  # the child process of `plans`
    args = parser.parse_args()
    if args.measure_plans:
        print(json.dumps(_measure_plans(Path(args.measure_plans), args.preset)))
        return
    sections = set(args.sections.split(","))
    work = Path(tempfile.mkdtemp(prefix="training-bench-"))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({"preset": args.preset, "workers": 2})
    if sections & {"zero", "loaders", "batches"}:
        data = _curated(work, args.preset)
    if "zero" in sections:
        results["cases"] = _zero_stages(work, data, args)
    if "loaders" in sections:
        results["loaders"] = _loaders(work, data, args)
    if "batches" in sections:
        results["batches"] = _batches(work, data, args)
    if "plans" in sections:
        results["plans"] = [_plans(work, int(rows), args.preset) for rows in args.catalog_rows.split(",")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


def _curated(work: Path, preset: str) -> Path:
    """A synthetic corpus curated with the paper's frame counts, so clips supply all four."""
    from support.synthetic import write_sample_corpus

    write_sample_corpus(work / "corpus", videos=3, seed=2)
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(work / "corpus"), "--out", str(work / "data"),
                    "--preset", preset, "--quiet", *_set(PAPER_FRAMES)], check=True, capture_output=True)
    return work / "data"


def _set(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _zero_stages(work: Path, data: Path, args: argparse.Namespace) -> list[dict]:
    cases = []
    for zero in (1, 2, 3):
        case = _train(work / f"zero{zero}", data, args, ["--zero-stage", str(zero)])
        cases.append({"zero_stage": zero, **case})
        print(f"{args.preset} ZeRO-{zero}: {case['samples_per_s']:.2f} samples/s, waiting "
              f"{100 * case['data_wait_share']:.0f}%; per rank: parameters {case['parameters_mb']:.1f} MB, "
              f"gradients {case['gradients_mb']:.1f} MB, optimizer state {case['optimizer_state_mb']:.1f} MB, "
              f"peak RSS {case['rss_peak_mb']:.0f} MB")
    return cases


def _loaders(work: Path, data: Path, args: argparse.Namespace) -> dict:
    loaders = {"media": _train(work / "media", data, args, ["--set", "train.encoded=never"])}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "encode", str(data), "--stage", "base", "--preset", args.preset,
                    "--quiet"], check=True, capture_output=True)
    encode_s = time.perf_counter() - started
    loaders["pre_encoded"] = _train(work / "encoded", data, args, ["--set", "train.encoded=require"])
    ratio = loaders["pre_encoded"]["samples_per_s"] / loaders["media"]["samples_per_s"]
    for name, case in loaders.items():
        print(f"{args.preset} ZeRO-2 from {name}: {case['samples_per_s']:.2f} samples/s, "
              f"waiting {100 * case['data_wait_share']:.0f}%")
    print(f"pre-encoded / media samples/s: {ratio:.2f} (encode pass {encode_s:.1f} s, once)")
    return {**loaders, "pre_encoded_vs_media": ratio, "encode_s": encode_s}


def _batches(work: Path, data: Path, args: argparse.Namespace) -> list[dict]:
    """Each frame count alone, at the fixed micro-batch and at the token budget."""
    from pipeline.config import load_config
    from training.data import micro_batch_sizes, tokens_per_sample

    config = load_config(args.preset, overrides=PAPER_FRAMES)
    budget = config.train.micro_batch * tokens_per_sample(config, "base", 32)
    sizes = micro_batch_sizes(load_config(args.preset, overrides=PAPER_FRAMES + [
        f"train.tokens_per_micro_batch={budget}"]), "base")
    rows = []
    for frames in (1, 8, 16, 32):
        only = [f"train.frame_counts=[{frames}]", "train.frame_weights=[1]", f"train.log_every={args.steps // 2}"]
        fixed = _train(work / f"fixed{frames}", data, args, _set(only))
        budgeted = _train(work / f"budget{frames}", data, args,
                          _set(only + [f"train.tokens_per_micro_batch={budget}"]))
        row = {"frames": frames, "fixed_micro_batch": config.train.micro_batch, "budget_micro_batch": sizes[frames],
               "tokens_per_micro_batch": budget, "fixed": fixed, "budget": budgeted,
               "samples_per_s_ratio": budgeted["samples_per_s"] / fixed["samples_per_s"]}
        rows.append(row)
        print(f"{frames:2d} frames: fixed {config.train.micro_batch}/micro-batch {fixed['samples_per_s']:.2f} samples/s "
              f"({fixed['tokens_per_s']:.0f} tokens/s, peak RSS {fixed['rss_peak_mb']:.0f} MB); budget "
              f"{sizes[frames]}/micro-batch {budgeted['samples_per_s']:.2f} samples/s "
              f"({budgeted['tokens_per_s']:.0f} tokens/s, peak RSS {budgeted['rss_peak_mb']:.0f} MB): "
              f"{row['samples_per_s_ratio']:.2f}x")
    return rows


def _plans(work: Path, rows: int, preset: str) -> dict:
    """Driver and loader costs of planning over a catalog of ``rows`` clips, in a fresh process."""
    data = work / f"catalog{rows}"
    started = time.perf_counter()
    _write_catalog(data, rows)
    written_s = time.perf_counter() - started
    child = subprocess.run([sys.executable, __file__, "--preset", preset, "--measure-plans", str(data)],
                           check=True, capture_output=True, text=True)
    figures = {"rows": rows, "write_s": written_s, **json.loads(child.stdout.strip().splitlines()[-1])}
    print(f"{rows:>8} rows: driver checks {figures['summary_s']:.2f} s, catalog to the object store "
          f"{figures['put_s']:.2f} s, driver RSS +{figures['driver_rss_growth_mb']:.0f} MB; a loader builds its "
          f"planner in {figures['planner_s']:.2f} s and plans a micro-batch in {figures['plan_us']:.0f} us")
    return figures


def _write_catalog(data: Path, rows: int) -> None:
    """A clips table with the catalog's columns (no media): clips of 1-20 s at 24 fps that
    supply the paper's (frames, fps) pairs their length allows."""
    import lance
    import numpy as np
    import pyarrow as pa

    from pipeline.tables import CLIPS, FRAME_FPS

    rng = np.random.default_rng(0)
    seconds = rng.uniform(1.0, 20.0, rows)
    pairs = np.array([(f, r) for f in (1, 8, 16, 32) for r in (1, 4, 8, 16)])
    supplies = (pairs[None, :, 0] - 1) / pairs[None, :, 1] <= seconds[:, None]  # (rows, pairs)
    counts = supplies.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    chosen = np.nonzero(supplies)[1]
    frame_fps = pa.ListArray.from_arrays(pa.array(offsets), pa.StructArray.from_arrays(
        [pa.array(pairs[chosen, 0], pa.int32()), pa.array(pairs[chosen, 1], pa.int32())], fields=list(FRAME_FPS)))
    crop = pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 448, 256], rows), pa.int32()), 4)
    ids = np.char.add("clip", np.arange(rows).astype(str))
    table = pa.table({
        "clip_id": pa.array(ids), "caption": pa.array(np.char.add("a generated caption for ", ids)),
        "fps": pa.array(np.full(rows, 24.0)), "num_frames": pa.array((seconds * 24).astype(np.int32)),
        "width": pa.array(np.full(rows, 1280, np.int32)), "video_width": pa.array(np.full(rows, 448, np.int32)),
        "crop_base": crop.cast(pa.list_(pa.int32())), "crop_refiner": crop.cast(pa.list_(pa.int32())),
        "frame_fps": frame_fps, "weight": pa.array(rng.uniform(0.1, 2.0, rows).astype(np.float32)),
        "keep": pa.array(np.ones(rows, bool)), "split": pa.array(np.where(rng.random(rows) < 0.01, "val", "train")),
    })
    lance.write_dataset(table, str(data / CLIPS), max_rows_per_file=1 << 20)


def _rss_mb() -> float:
    """This process's resident memory now (ru_maxrss would keep the start-up's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_plans(data: Path, preset: str) -> dict:
    """The child of ``_plans``: what ``i2vgen train``'s driver does with the catalog, then a loader's part."""
    import lance
    import ray

    from pipeline.config import load_config
    from pipeline.ray_runtime import init_ray
    from pipeline.tables import CLIPS
    from training.data import Planner, put_catalog, summarize_catalog, validate_shapes

    config = load_config(preset, overrides=PAPER_FRAMES)
    init_ray(num_cpus=2)
    lance.dataset(str(data / CLIPS)).count_rows()  # Lance's runtime starts before the baseline
    before = _rss_mb()
    started = time.perf_counter()
    validate_shapes(summarize_catalog(data), config, "base")
    summary_s = time.perf_counter() - started
    started = time.perf_counter()
    catalog_ref, _, _ = put_catalog(str(data), config, "base")
    put_s = time.perf_counter() - started
    growth = _rss_mb() - before
    started = time.perf_counter()
    planner = Planner(ray.get(catalog_ref), config, "base")
    planner_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(1000):
        planner.plan(index)
    plan_us = (time.perf_counter() - started) * 1000
    return {"summary_s": summary_s, "put_s": put_s, "driver_rss_growth_mb": growth, "planner_s": planner_s,
            "plan_us": plan_us}


def _train(run: Path, data: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """One ZeRO run of the base stage; its figures from rank 0's last metrics row."""
    subprocess.run([sys.executable, "-m", "pipeline", "train", "--stage", "base", "--data", str(data),
                    "--run", str(run), "--preset", args.preset, "--max-steps", str(args.steps),
                    "--checkpoint-every", str(args.steps // 2), *extra], check=True, capture_output=True)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
    keys = ("step", "samples_per_s", "tokens_per_s", "data_wait_share", "parameters_mb", "gradients_mb",
            "optimizer_state_mb", "rss_peak_mb", "pre_encoded", "micro_batch")
    return {k: last[k] for k in keys}


if __name__ == "__main__":
    main()
