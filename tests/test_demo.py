"""``i2vgen demo`` end to end on a small budget: every stage runs, the page shows each part,
and a second run over the same folder resumes instead of redoing the work."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import decord
import pytest

BUDGET = ["corpus_videos=2", "base_steps=4", "refiner_steps=2", "heldout=2", "sampling_steps=3"]


def _demo(out, *budget: str) -> subprocess.CompletedProcess:
    args = [a for item in budget for a in ("--budget", item)]
    return subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_writes_its_page(tmp_path) -> None:
    out = tmp_path / "demo"
    proc = _demo(out, *BUDGET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["timings_s"]) == ["sample corpus", "curation", "train base", "train refiner", "generate"]
    assert summary["curation"]["rejects"]["rows"] >= 3  # the corpus's broken files
    for model in ("trained", "untrained"):
        assert all(math.isfinite(v) for v in summary["figures"][model].values())
    page = (out / "index.html").read_text()
    assert "curated/report.html" in page and (out / "curated" / "report.html").exists()
    assert (out / "runs" / "base" / "loss.png").exists() and "runs/refiner/loss.png" in page
    for row in summary["rows"]:
        assert row["mp4"] in page
        video = decord.VideoReader(str(out / "videos" / row["mp4"]))
        assert (len(video), *video[0].shape) == (8, 128, 224, 3)
    steps = [json.loads(line)["step"] for line in (out / "runs" / "base" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    again = _demo(out, *BUDGET)  # same folder: nothing is trained again
    assert again.returncode == 0, again.stderr[-4000:]
    steps_again = [json.loads(line)["step"] for line in (out / "runs" / "base" / "metrics.jsonl").read_text().splitlines()]
    assert steps_again == steps


def test_a_bad_budget_key_is_named(tmp_path) -> None:
    proc = _demo(tmp_path, "base_stepz=3")
    assert proc.returncode == 2 and "base_stepz" in proc.stderr
