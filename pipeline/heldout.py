"""Held-out clips: the rows a model is measured on rather than trained on.

``i2vgen eval`` animates their first frames and compares the result with what the clip
really did next; the training loop reads the same clips on each Ray worker for its
validation loss. So this module reads only from the curated folder it is given (no driver
state), and a clip's frames are cut exactly as the training loader cuts them: the row's
stored crop, ``pipeline.frames.crop_resize``, a fixed sampling rate from the clip's start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.loader import ConfigError
from pipeline.frames import crop_resize
from pipeline.tables import CLIPS, open_curated
from pipeline.curated_media import MediaSource, stage_crop

_COLUMNS = ["clip_id", "caption", "fps", "num_frames", "width", "video_width"]
_CROP_STAGES = {"crop_base": "base", "crop_refiner": "refiner"}  # crop column -> stage_crop's stage


@dataclass
class HeldoutClip:
    """One held-out clip: what a model is given and what it should reproduce."""

    clip_id: str
    caption: str
    image: np.ndarray  # (H, W, 3) uint8: the stored first frame, uncropped (the input to animate)
    frames: np.ndarray  # (F, h, w, 3) uint8: the clip from its start at the asked fps, cropped and resized


def heldout_clips(
    data_dir: str | Path,
    where: str,
    count: int,
    frames: int,
    fps: int,
    size: tuple[int, int],
    stage_crop_key: str = "crop_base",
    option: str = "--where",
) -> list[HeldoutClip]:
    """The first ``count`` kept clips matching ``where`` (by clip_id) that hold ``frames``
    frames at ``fps``, each read from frame 0 every ``round(clip fps / fps)`` frames, cut
    with the row's ``stage_crop_key`` crop and resized to ``size`` (width, height).

    Ordering by clip_id makes the selection a function of the table alone, so two
    evaluations of the same folder see the same clips. ``option`` names the setting the
    filter came from in errors (the CLI's ``--where``, the trainer's ``train.val_where``).
    """
    if stage_crop_key not in _CROP_STAGES:
        raise ValueError(f"stage_crop_key must be one of {sorted(_CROP_STAGES)}, got {stage_crop_key!r}")
    rows = heldout_rows(data_dir, where, frames, fps, option, [stage_crop_key])
    media = MediaSource(str(data_dir), images=False)
    return [_read(media, row, frames, fps, size, stage_crop_key) for row in rows[:count]]


def heldout_rows(
    data_dir: str | Path, where: str, frames: int, fps: int, option: str = "--where", extra: list[str] = (),
) -> list[dict]:
    """The matching kept rows (small columns only, ordered by clip_id) that hold ``frames``
    frames at ``fps``; a ConfigError names ``option`` when there are none. A driver can call
    it to check a filter before any worker starts: it reads no media."""
    path = Path(data_dir) / CLIPS
    if not path.exists():
        raise ConfigError(f"--data: {path} does not exist; run `i2vgen curate ... --out {data_dir}` first")
    dataset = open_curated(path)
    if "split" not in dataset.schema.names and re.search(r"\bsplit\b", where):
        raise ConfigError(f"{option} {where!r}: {path} has no split column (curated before splits existed); "
                          f"re-curate it or choose the held-out rows with another {option}")
    try:
        table = dataset.to_table(columns=_COLUMNS + list(extra), filter=f"keep = true AND ({where})",
                                 with_row_id=True)
    except (ValueError, OSError) as err:  # lance reports a bad filter as either
        raise ConfigError(f"{option} {where!r}: cannot apply it to {path}: {err}") from err
    rows = table.sort_by("clip_id").to_pylist()
    if not rows:
        raise ConfigError(f"{option} {where!r}: no kept row of {path} matches")
    long_enough = [r for r in rows if _stride(r["fps"], fps) * (frames - 1) + 1 <= r["num_frames"]]
    if not long_enough:
        raise ConfigError(f"{option} {where!r}: none of the {len(rows)} matching rows of {path} "
                          f"holds {frames} frames at {fps} fps")
    return long_enough


def _stride(clip_fps: float, fps: int) -> int:
    """Source frames between two sampled frames (at least one: frames are never invented)."""
    return max(1, round(clip_fps / fps))


def _read(media: MediaSource, row: dict, frames: int, fps: int, size: tuple[int, int], crop_key: str) -> HeldoutClip:
    reader = media.video(row["_rowid"])
    stride = _stride(row["fps"], fps)
    # Frame 0 is both the input image and the first real frame, so one decode serves both.
    decoded = reader.get_batch(list(range(0, stride * frames, stride))).asnumpy()
    crop, scale = stage_crop(row, _CROP_STAGES[crop_key], "clips")
    return HeldoutClip(row["clip_id"], row["caption"] or "", decoded[0], crop_resize(decoded, crop, size, scale))
