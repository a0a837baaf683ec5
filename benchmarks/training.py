"""Training throughput, data-wait share and per-rank memory by ZeRO stage, side by side.

    python benchmarks/training.py                  # tiny, ZeRO 1/2/3 at 2 CPU workers
    python benchmarks/training.py --preset small   # the mid-size model (slow on a CPU)

Each case is a real ``i2vgen train`` run on a freshly curated synthetic corpus; figures come
from the run's own ``metrics.jsonl`` (rank 0): samples/s and the share of time spent
waiting for data after the first checkpoint window, the model states this rank holds
(parameters between steps, gradients when backward returns, optimizer state: what each
ZeRO stage partitions) and the worker's peak RSS.
Then the same ZeRO-2 run twice more, side by side: with the frozen encoders on the trainers
decoding media (``train.encoded=never``) and on the latents and CLIP features that
``i2vgen encode`` stored (``train.encoded=require``), with the encode pass's own time.
Writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This script shares its name with the package it measures: keep the package importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "training.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--zero-stages", default="1,2,3", help="ZeRO stages to compare; empty: only the loaders")
    args = parser.parse_args()

    from curation.synthetic import write_sample_corpus

    work = Path(tempfile.mkdtemp(prefix="training-bench-"))
    write_sample_corpus(work / "corpus", videos=3, seed=2)
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(work / "corpus"), "--out", str(work / "data"),
                    "--preset", args.preset, "--quiet"], check=True, capture_output=True)
    data = work / "data"
    cases = []
    for zero in [int(z) for z in args.zero_stages.split(",") if z]:
        case = _train(work / f"zero{zero}", data, args, ["--zero-stage", str(zero)])
        cases.append({"zero_stage": zero, **case})
        print(f"{args.preset} ZeRO-{zero}: {case['samples_per_s']:.2f} samples/s, waiting "
              f"{100 * case['data_wait_share']:.0f}%; per rank: parameters {case['parameters_mb']:.1f} MB, "
              f"gradients {case['gradients_mb']:.1f} MB, optimizer state {case['optimizer_state_mb']:.1f} MB, "
              f"peak RSS {case['rss_peak_mb']:.0f} MB")
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "preset": args.preset, "workers": 2, "cases": cases,
        "loaders": {**loaders, "pre_encoded_vs_media": ratio, "encode_s": encode_s},
    }, indent=2))
    print(f"wrote {RESULTS}")


def _train(run: Path, data: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """One ZeRO run of the base stage; its figures from rank 0's last metrics row."""
    subprocess.run([sys.executable, "-m", "pipeline", "train", "--stage", "base", "--data", str(data),
                    "--run", str(run), "--preset", args.preset, "--max-steps", str(args.steps),
                    "--checkpoint-every", str(args.steps // 2), *extra], check=True, capture_output=True)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
    keys = ("step", "samples_per_s", "data_wait_share", "parameters_mb", "gradients_mb", "optimizer_state_mb",
            "rss_peak_mb", "pre_encoded")
    return {k: last[k] for k in keys}


if __name__ == "__main__":
    main()
