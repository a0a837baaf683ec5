"""``i2vgen demo --out DIR`` (``make demo``): the whole system on the embedded defaults.

A generated corpus is curated (with its report), the ``tiny`` base and then the refiner
(initialised from the base) are trained with DeepSpeed on 2 Ray workers for a fixed budget,
and the cascade animates the first frames of held-out clips, once with the trained stages
and once with untrained ones, so the page shows what training bought. Every step skips
what an earlier run of the same DIR finished (curation and training resume themselves).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import decord
import numpy as np
from PIL import Image

from curation.synthetic import ShotSpec, write_sample_corpus, write_video
from evaluation.metrics import first_frame_psnr, motion_agreement
from demo.page import write_page
from inference.cascade import Cascade
from inference.request import make_request
from inference.video_files import contact_sheet, write_outputs
from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.models.stage_file import save_untrained_stages

log = logging.getLogger("demo")

# Held-out clips: kinds with a clear direction of motion, seeds the corpus never uses.
HELDOUT_SHOTS = (("pan", 9001), ("moving_shape", 9002), ("pan", 9003), ("moving_shape", 9004))


@dataclass
class DemoBudget:
    """How much the demo does; the defaults fit about ten minutes on 2 cores."""

    corpus_videos: int = 4
    base_steps: int = 100
    refiner_steps: int = 20  # a refiner step costs 4x a base step (4x the pixels)
    heldout: int = 3
    frames: int = 8
    fps: int = 8
    sampling_steps: int = 10


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


def _training_config(steps: int) -> Config:
    return load_config("tiny", overrides=[f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
                                          f"train.log_every={max(1, steps // 30)}"])


def _heldout_clips(folder: Path, budget: DemoBudget) -> list[dict[str, Any]]:
    """Single-shot clips the model never saw: the first frame to animate, and the frames that
    followed it at the generation's fps (the motion to agree with)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for kind, seed in HELDOUT_SHOTS[: budget.heldout]:
        path = folder / f"{kind}_{seed}.mp4"
        if not path.exists():
            write_video(path, [ShotSpec(kind, 48, seed=seed)], fps=24)
        reader = decord.VideoReader(str(path))
        stride = max(1, round(reader.get_avg_fps() / budget.fps))
        frames = reader.get_batch(list(range(0, stride * budget.frames, stride))).asnumpy()
        clips.append({"name": path.stem, "kind": kind, "image": frames[0], "reference": frames})
    return clips


def _animate(cascade: Cascade, clips: list[dict[str, Any]], budget: DemoBudget, out: Path, label: str) -> list[dict]:
    config = cascade.config
    requests = [make_request(config, c["image"], prompt=c["kind"].replace("_", " "), frames=budget.frames,
                             fps=budget.fps, steps=budget.sampling_steps, seed=i) for i, c in enumerate(clips)]
    videos = cascade.generate(requests)
    rows = []
    for clip, video in zip(clips, videos):
        mp4 = out / f"{clip['name']}_{label}.mp4"
        write_outputs(video, budget.fps, mp4, sheet=out / f"{clip['name']}_{label}.png")
        size = (video.shape[2], video.shape[1])
        reference = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in clip["reference"]])
        rows.append({"clip": clip["name"], "model": label, "mp4": mp4.name, "sheet": f"{clip['name']}_{label}.png",
                     "psnr_first_frame": first_frame_psnr(video, clip["image"]),
                     "motion_agreement": motion_agreement(video, reference)})
    return rows


def run_demo(out_dir: str | Path, budget: DemoBudget = DemoBudget()) -> dict[str, Any]:
    from curation.job import curate
    from curation.report import write_report
    from training.job import checkpoint_step, export, latest_checkpoint, train

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus, data, exports = out / "corpus", out / "curated", out / "exports"
    with _stage("sample corpus", timings):
        if not (corpus / "manifest.csv").exists():
            write_sample_corpus(corpus, videos=budget.corpus_videos)
    with _stage("curation", timings):
        curation = curate([str(corpus)], data, load_config("tiny"), progress=False)
        write_report(data, load_config("tiny").curation.filters)
    for stage, steps in (("base", budget.base_steps), ("refiner", budget.refiner_steps)):
        with _stage(f"train {stage}", timings):
            run, export_path = out / "runs" / stage, exports / f"{stage}.safetensors"
            if checkpoint_step(latest_checkpoint(run)) < steps or not export_path.exists():
                init = str(exports / "base.safetensors") if stage == "refiner" else None
                train(_training_config(steps), stage, str(data), str(run), init=init)
                export(run, export_path)
    with _stage("generate", timings):
        config = load_config("tiny")
        clips = _heldout_clips(out / "heldout", budget)
        untrained = save_untrained_stages(exports / "untrained", config)
        videos = out / "videos"
        rows = _animate(Cascade.from_files(config, exports / "base.safetensors", exports / "refiner.safetensors"),
                        clips, budget, videos, "trained")
        rows += _animate(Cascade.from_files(config, untrained["base"], untrained["refiner"]), clips, budget, videos,
                         "untrained")
        for clip in clips:
            contact_sheet(clip["reference"]).save(videos / f"{clip['name']}_heldout.png")
    figures = {
        model: {metric: float(np.mean([r[metric] for r in rows if r["model"] == model]))
                for metric in ("psnr_first_frame", "motion_agreement")}
        for model in ("trained", "untrained")
    }
    summary = {"budget": asdict(budget), "timings_s": timings, "curation": curation, "figures": figures,
               "trained_is_better": {m: figures["trained"][m] > figures["untrained"][m] for m in figures["trained"]},
               "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_page(out, summary)
    log.info("wrote %s", out / "index.html")
    return summary
