"""``i2vgen eval --base FILE --data DIR --out DIR``: a trained stage measured on held-out clips.

Each clip's first frame is animated through the cascade and the video compared with what
the clip really did (``evaluation.metrics``), and the base's validation loss is taken on
the same clips beside the loss of predicting zeros, so one folder holds both the sample
quality and the training signal of a model. Every clip keeps its own numbers, so two runs
on the same clips compare pair by pair (``evaluation.compare``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from evaluation.metrics import (
    clip_consistency, continuation_psnr, first_frame_psnr, flicker, freeze_frame_psnr, mean_flow_magnitude,
    motion_agreement,
)
from evaluation.page import write_page
from pipeline.generation.cascade import Cascade, Video
from pipeline.generation.request import GenerationRequest, RequestError, make_request
from pipeline.generation.video_files import contact_sheet, write_outputs
from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.heldout import HeldoutClip, heldout_clips
from pipeline.validation_loss import ValidationLosses, clips_batch, validation_losses

# The means eval.json reports, in the order its table shows them. dynamic_degree is the
# share of clips whose generated video moves (per clip: 0 or 1).
METRICS = ("first_frame_psnr", "continuation_psnr", "freeze_frame_psnr", "motion_agreement", "flicker",
           "dynamic_degree", "validation_loss", "zero_prediction_loss")
# Only with CLIP weights configured: a random CLIP's embedding says nothing about content.
CLIP_METRIC = "clip_consistency"


def run_eval(
    config: Config,
    base: str | Path,
    refiner: Optional[str | Path],
    data_dir: str | Path,
    where: str,
    clips: int,
    seed: int,
    steps: int,
    out: str | Path,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate on the first ``clips`` held-out clips matching ``where``; writes
    ``out/eval.json``, ``out/index.html`` and the clips' media under ``out/clips``, and
    returns what eval.json holds.

    Clip ``i`` is generated with seed ``seed + i``, its validation loss drawn with the same
    seed, so a run is repeatable and two models on the same settings see the same noise.
    With a refiner, the refined video is compared with real frames cut at the refiner's
    size (the base's crop, which the cascade upscales); the losses stay the base's.
    """
    if clips < 1:
        raise ConfigError(f"--clips: expected a positive count, got {clips}")
    out = Path(out)
    stage, fps = config.stages.base, config.sampling.fps
    heldout = heldout_clips(data_dir, where, clips, stage.frames, fps, (stage.width, stage.height))
    cascade = Cascade.from_files(config, base, refiner, device=device)
    videos = cascade.generate(_requests(config, heldout, fps, steps, seed))
    real = heldout
    if refiner is not None:
        size = (config.stages.refiner.width, config.stages.refiner.height)
        real = heldout_clips(data_dir, where, clips, stage.frames, fps, size)
    losses = base_validation_losses(cascade, heldout, fps, seed)
    threshold = config.curation.filters.min_motion
    rows = []
    for i, (clip, video, loss) in enumerate(zip(real, videos, losses)):
        row = {"clip_id": clip.clip_id, "caption": clip.caption, **_write_media(out / "clips", i, clip, video, fps)}
        row |= clip_metrics(video, clip.frames, fps, threshold) | {
            "validation_loss": loss.validation_loss, "zero_prediction_loss": loss.zero_prediction_loss,
        }
        if config.clip.weights is not None:
            row[CLIP_METRIC] = clip_consistency(cascade.clip, video, clip.frames[0])
        rows.append(row)
    names = METRICS + ((CLIP_METRIC,) if config.clip.weights is not None else ())
    result: dict[str, Any] = {name: float(np.mean([r[name] for r in rows])) for name in names}
    result["clips"] = rows
    height, width = videos[0].shape[1:3]
    result["settings"] = {
        "base": str(base), "refiner": None if refiner is None else str(refiner), "data": str(data_dir),
        "where": where, "seed": seed, "steps": steps, "clips": clips, "preset": config.preset,
        "frames": stage.frames, "fps": fps, "size": [width, height], "dynamic_threshold": threshold,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    write_page(out, result, names)
    return result


def clip_metrics(video: Video, real: np.ndarray, fps: int, dynamic_threshold: float) -> dict[str, float]:
    """The weight-free scores of one generated video against its real clip (same size and
    rate); ``real[0]`` is the input image as the comparison sees it."""
    magnitude = mean_flow_magnitude(video, fps)
    return {
        "first_frame_psnr": first_frame_psnr(video, real[0]),
        "continuation_psnr": continuation_psnr(video, real),
        "freeze_frame_psnr": freeze_frame_psnr(real[0], real),
        "motion_agreement": motion_agreement(video, real),
        "flicker": flicker(video),
        "flow_magnitude": magnitude,
        "dynamic_degree": int(magnitude > dynamic_threshold),
    }


def base_validation_losses(
    cascade: Cascade, heldout: list[HeldoutClip], fps: int, seed: int
) -> list[ValidationLosses]:
    """The base's validation and zero-prediction loss on each clip (at the base's size),
    from the cascade's encoders as the trainer would encode the clip; clip ``i`` with
    ``seed + i``."""
    model = cascade.base  # eval mode since the cascade loaded it: no temporal dropout
    # The trainer's condition dropout replaces the text with the empty prompt's tokens.
    null_text = cascade.clip.encode_text([""]) if model.conditioning.null_prompt else None
    losses = []
    for i, clip in enumerate(heldout):
        batch = clips_batch(model, cascade.clip, cascade.vae, [clip], fps, cascade.dtype, null_text)
        losses.append(validation_losses(model, cascade.noise_schedule, batch, cascade.config, seed=seed + i))
    return losses


def _requests(config: Config, heldout: list[HeldoutClip], fps: int, steps: int, seed: int) -> list[GenerationRequest]:
    """One request per clip: its first frame and caption (cut to the endpoint's prompt
    limit: a long curated caption is still the clip's text), the sampling defaults otherwise."""
    limit = config.serving.max_prompt_chars
    try:
        return [make_request(config, c.image, c.caption[:limit], config.stages.base.frames, fps, steps, seed=seed + i)
                for i, c in enumerate(heldout)]
    except RequestError as err:
        raise ConfigError(f"--{err.field}: {err.message}") from err


def _write_media(folder: Path, index: int, clip: HeldoutClip, video: Video, fps: int) -> dict[str, str]:
    """The clip's input image, both videos as mp4, and a strip of generated frames (top row)
    over the real ones (bottom row); returns their paths relative to the eval folder."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", clip.clip_id)
    names = {"input": f"{stem}_input.png", "generated": f"{stem}_generated.mp4", "real": f"{stem}_real.mp4",
             "strip": f"{stem}_strip.png"}
    Image.fromarray(clip.image).save(folder / names["input"])
    write_outputs(video, fps, folder / names["generated"])
    write_outputs(clip.frames, fps, folder / names["real"])
    contact_sheet(np.concatenate([video, clip.frames]), columns=len(video)).save(folder / names["strip"])
    return {key: f"{folder.name}/{name}" for key, name in names.items()}
