"""``i2vgen demo`` end to end on a small budget: every stage runs, the page shows each part,
and a second run over the same folder resumes instead of redoing the work."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import decord
import pytest

BUDGET = ["corpus_videos=2", "base_steps=4", "refiner_steps=2", "heldout=2", "sampling_steps=3", "validations=2"]


def _demo(out, *budget: str) -> subprocess.CompletedProcess:
    args = [a for item in budget for a in ("--budget", item)]
    return subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=2400)


def _steps(out, stage: str) -> list[tuple[int, str]]:
    lines = (out / "runs" / stage / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r.get("kind", "train")) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_writes_its_page(tmp_path) -> None:
    out = tmp_path / "demo"
    proc = _demo(out, *BUDGET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["timings_s"]) == ["sample corpus", "curation", "train base", "train refiner",
                                          "eval base_trained", "eval base_step0", "eval cascade_trained",
                                          "eval cascade_step0"]
    assert summary["curation"]["rejects"]["rows"] >= 3  # the corpus's broken files
    for name, means in summary["means"].items():
        assert all(math.isfinite(v) for v in means.values()), name
    assert set(summary["trained_is_better"]) == {"base", "cascade"}
    page = (out / "index.html").read_text()
    assert "curated/report.html" in page and (out / "curated" / "report.html").exists()
    assert (out / "runs" / "base" / "loss.png").exists() and "runs/refiner/loss.png" in page
    for name in ("base_trained", "base_step0", "cascade_trained", "cascade_step0"):
        result = json.loads((out / "eval" / name / "eval.json").read_text())
        assert len(result["clips"]) == 2 and f"eval/{name}/index.html" in page
        size = (128, 224) if name.startswith("cascade") else (64, 112)
        for clip in result["clips"]:
            video = decord.VideoReader(str(out / "eval" / name / clip["generated"]))
            assert (len(video), *video[0].shape) == (8, *size, 3)
    # the step-0 baseline is the run's own start, exported like the trained stage
    assert (out / "runs" / "base" / "initial.safetensors").exists()
    steps = _steps(out, "base")
    assert steps[-1][0] == 4 and (0, "validation") in steps and (4, "validation") in steps
    assert list((out / "runs" / "base" / "samples" / "step_000004").glob("*.mp4"))
    again = _demo(out, *BUDGET)  # same folder: nothing is trained again
    assert again.returncode == 0, again.stderr[-4000:]
    assert _steps(out, "base") == steps


def test_a_bad_budget_key_is_named(tmp_path) -> None:
    proc = _demo(tmp_path, "base_stepz=3")
    assert proc.returncode == 2 and "base_stepz" in proc.stderr
