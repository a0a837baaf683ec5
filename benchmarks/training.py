"""Training throughput, data-wait share and per-rank memory by ZeRO stage, side by side.

    python benchmarks/training.py                  # tiny, ZeRO 1/2/3 at 2 CPU workers
    python benchmarks/training.py --preset small   # the mid-size model (slow on a CPU)

Each case is a real ``i2vgen train`` run on a freshly curated synthetic corpus; figures come
from the run's own ``metrics.jsonl`` (rank 0): samples/s and the share of time spent
waiting for data after the first checkpoint window, the optimizer state this rank holds
(ZeRO partitions it, so it should shrink from stage 1 up) and the worker's peak RSS.
Writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# This script shares its name with the package it measures: keep the package importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "training.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    from curation.synthetic import write_sample_corpus

    work = Path(tempfile.mkdtemp(prefix="training-bench-"))
    write_sample_corpus(work / "corpus", videos=3, seed=2)
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(work / "corpus"), "--out", str(work / "data"),
                    "--preset", args.preset, "--quiet"], check=True, capture_output=True)
    cases = []
    for zero in (1, 2, 3):
        run = work / f"zero{zero}"
        subprocess.run([sys.executable, "-m", "pipeline", "train", "--stage", "base", "--data", str(work / "data"),
                        "--run", str(run), "--preset", args.preset, "--zero-stage", str(zero),
                        "--max-steps", str(args.steps), "--checkpoint-every", str(args.steps // 2)],
                       check=True, capture_output=True)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = rows[-1]
        cases.append({
            "zero_stage": zero,
            "steps": last["step"],
            "samples_per_s": last["samples_per_s"],
            "data_wait_share": last["data_wait_share"],
            "optimizer_state_mb": last["optimizer_state_mb"],
            "rss_peak_mb": last["rss_peak_mb"],
        })
        c = cases[-1]
        print(f"{args.preset} ZeRO-{zero}: {c['samples_per_s']:.2f} samples/s, waiting {100 * c['data_wait_share']:.0f}%, "
              f"optimizer state {c['optimizer_state_mb']:.1f} MB/rank, peak RSS {c['rss_peak_mb']:.0f} MB/rank")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"preset": args.preset, "workers": 2, "cases": cases}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
