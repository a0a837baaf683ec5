"""``i2vgen demo --out DIR`` (``make demo``): the whole system on the embedded defaults.

A generated corpus is curated (with its report), the ``tiny`` base and then the refiner
(initialised from the base) are trained with DeepSpeed on 2 Ray workers for a fixed budget,
validating on held-out clips as they go, and ``i2vgen eval`` measures the base alone and the
whole cascade on those clips, each against the run's own step-0 weights, so the page shows
what training bought. Every step skips what an earlier run of the same DIR finished
(curation and training resume themselves).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from demo.page import write_page
from evaluation.compare import compare
from evaluation.run import run_eval
from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from support.synthetic import ShotSpec, write_sample_corpus, write_video
from training.loop import INITIAL_WEIGHTS

log = logging.getLogger("demo")

# Held-out clips: kinds with a clear direction of motion, seeds the corpus never uses. They
# are curated with the corpus (so they are cut and stored as any clip) but never trained on.
HELDOUT_SHOTS = (("pan", 9001), ("moving_shape", 9002), ("pan", 9003), ("moving_shape", 9004))
HELDOUT_FOLDER = "heldout"
HELDOUT_ROWS = f"source LIKE '%/{HELDOUT_FOLDER}/%'"
# What the page compares: the base alone and the cascade, trained and at their step-0 weights.
EVALUATIONS = ("base_trained", "base_step0", "cascade_trained", "cascade_step0")


@dataclass
class DemoBudget:
    """How much the demo does; the defaults fit about fifteen minutes on 2 cores."""

    corpus_videos: int = 4
    base_steps: int = 150
    refiner_steps: int = 10  # a refiner step costs about 4x a base step (4x the pixels)
    heldout: int = 4
    sampling_steps: int = 10
    validations: int = 3  # validation points of the base's run (plus step 0); the refiner's: start and end


def budget_from(items: list[str]) -> DemoBudget:
    """A budget from ``key=value`` strings; an unknown key or a non-integer value names itself."""
    values = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in DemoBudget.__dataclass_fields__:
            raise ConfigError(f"--budget {key}: unknown; known keys: {sorted(DemoBudget.__dataclass_fields__)}")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--budget {key}: expected a positive integer, got {value!r}")
        values[key] = int(value)
    return DemoBudget(**values)


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("== %s", name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 1)
    log.info("== %s done in %.1f s", name, timings[name])


def _training_config(steps: int, validations: int) -> Config:
    return load_config("tiny", overrides=[
        f"train.max_steps={steps}", f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 30)}",
        f"train.val_where={HELDOUT_ROWS}", f"train.validate_every={max(1, steps // validations)}",
    ])


def _write_heldout(folder: Path) -> None:
    """Single-shot clips the model never trains on, beside the corpus they are curated with."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, seed in HELDOUT_SHOTS:
        path = folder / f"{kind}_{seed}.mp4"
        if not path.exists():
            write_video(path, [ShotSpec(kind, 48, seed=seed)], fps=24)


def _figures(evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each evaluation's means, and per model (base, cascade) whether the trained stages
    beat their step-0 weights, metric by metric (flicker and dynamic degree are reported,
    not ranked: a still video has no flicker)."""
    ranked = {"first_frame_psnr": 1, "continuation_psnr": 1, "motion_agreement": 1, "validation_loss": -1}
    means = {name: {k: v for k, v in result.items() if isinstance(v, float) or isinstance(v, int)}
             for name, result in evaluations.items()}
    better = {
        model: {metric: sign * (means[f"{model}_trained"][metric] - means[f"{model}_step0"][metric]) > 0
                for metric, sign in ranked.items()}
        for model in ("base", "cascade")
    }
    return {"means": means, "trained_is_better": better}


def run_demo(out_dir: str | Path, budget: DemoBudget = DemoBudget()) -> dict[str, Any]:
    from curation.job import curate
    from curation.report import write_report
    from training.job import checkpoint_step, export, latest_checkpoint, train

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus, data, exports, runs = out / "corpus", out / "curated", out / "exports", out / "runs"
    with _stage("sample corpus", timings):
        if not (corpus / "manifest.csv").exists():
            write_sample_corpus(corpus, videos=budget.corpus_videos)
        _write_heldout(corpus / HELDOUT_FOLDER)
    with _stage("curation", timings):
        curation = curate([str(corpus)], data, load_config("tiny"), progress=False)
        write_report(data, load_config("tiny"))
    for stage, steps in (("base", budget.base_steps), ("refiner", budget.refiner_steps)):
        with _stage(f"train {stage}", timings):
            run, export_path = runs / stage, exports / f"{stage}.safetensors"
            if checkpoint_step(latest_checkpoint(run)) < steps or not export_path.exists():
                init = str(exports / "base.safetensors") if stage == "refiner" else None
                # A refiner validation costs about a quarter of its ten steps: at the start and the end only.
                validations = budget.validations if stage == "base" else 1
                train(_training_config(steps, validations), stage, str(data), str(run), init=init)
                export(run, export_path)
    config = load_config("tiny")
    stages = {"trained": {s: exports / f"{s}.safetensors" for s in ("base", "refiner")},
              "step0": {s: runs / s / INITIAL_WEIGHTS for s in ("base", "refiner")}}
    evaluations = {}
    for name in EVALUATIONS:
        model, weights = name.split("_")
        with _stage(f"eval {name}", timings):
            evaluations[name] = run_eval(
                config, stages[weights]["base"], stages[weights]["refiner"] if model == "cascade" else None,
                data, HELDOUT_ROWS, budget.heldout, seed=0, steps=budget.sampling_steps, out=out / "eval" / name,
            )
    comparisons = {model: compare(out / "eval" / f"{model}_step0" / "eval.json",
                                  out / "eval" / f"{model}_trained" / "eval.json")
                   for model in ("base", "cascade")}
    summary = {"budget": asdict(budget), "timings_s": timings, "curation": curation,
               **_figures(evaluations), "comparisons": comparisons}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_page(out, summary)
    log.info("wrote %s", out / "index.html")
    return summary
