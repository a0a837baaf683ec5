"""Keep or drop, how often to draw, and train or validation: recomputed on every run (the
first two from the stored scores, so new thresholds need no re-scoring; the split from the
row's id alone)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.config.schema import FiltersConfig


def keep_and_reasons(scores: pd.DataFrame, cfg: FiltersConfig) -> tuple[np.ndarray, list[str | None]]:
    """Apply the thresholds; the reason names the first failed check and its numbers, and
    starts with the column it checked (``near_duplicate`` for a copy of a kept clip).

    ``scores`` has ``aesthetic`` and ``subject`` columns; clips also have ``motion``,
    ``camera_motion``, ``text_area`` and ``near_duplicate_of``. A missing score is a drop
    (``could not be scored``), except a text area or camera class that older tables never
    measured, which no filter can judge.
    """
    reasons: list[str | None] = [None] * len(scores)
    if "near_duplicate_of" in scores:
        for i, kept in enumerate(scores["near_duplicate_of"]):
            if isinstance(kept, str):
                reasons[i] = f"near_duplicate of {kept}"
    checks = [
        ("aesthetic", lambda v: v < cfg.min_aesthetic, lambda v: f"aesthetic {v:.2f} < {cfg.min_aesthetic:g}"),
        ("motion", lambda v: v < cfg.min_motion, lambda v: f"motion {v:.4f} < {cfg.min_motion:g} (too static)"),
        ("motion", lambda v: v > cfg.max_motion, lambda v: f"motion {v:.3f} > {cfg.max_motion:g} (too fast)"),
        ("subject", lambda v: v < cfg.min_subject, lambda v: f"subject {v:.2f} < {cfg.min_subject:g}"),
        ("subject", lambda v: v > cfg.max_subject, lambda v: f"subject {v:.2f} > {cfg.max_subject:g}"),
    ]
    for column, fails, explain in checks:
        if column not in scores:
            continue
        for i, value in enumerate(scores[column].to_numpy(dtype=np.float64)):
            if reasons[i] is None and np.isnan(value):
                reasons[i] = f"{column} could not be scored"
            elif reasons[i] is None and fails(value):
                reasons[i] = explain(value)
    if "camera_motion" in scores:
        for i, camera in enumerate(scores["camera_motion"]):
            if reasons[i] is None:
                reasons[i] = _camera_reason(camera if isinstance(camera, str) else None, cfg)
    if "text_area" in scores:
        for i, area in enumerate(scores["text_area"].to_numpy(dtype=np.float64)):
            if reasons[i] is None and area > cfg.max_text_area:
                reasons[i] = f"text_area {area:.3f} > {cfg.max_text_area:g}"
    keep = np.array([r is None for r in reasons], dtype=bool)
    return keep, reasons


def _camera_reason(camera: str | None, cfg: FiltersConfig) -> str | None:
    if camera is not None and camera in cfg.drop_camera:
        return f"camera_motion {camera} is in drop_camera"
    if cfg.keep_camera and camera not in cfg.keep_camera:
        return f"camera_motion {camera or 'unknown'} is not in keep_camera {sorted(cfg.keep_camera)}"
    return None


def balancing_weights(scores: pd.DataFrame, keep: np.ndarray, bins: int, columns: list[str]) -> np.ndarray:
    """Sampling weights that draw each stratum of ``columns`` equally often.

    Kept rows are binned by quantiles of each score column (aesthetic, motion, subject, ...)
    and by class for ``camera_motion``; a row's weight is 1 / (rows in its stratum), scaled
    so kept weights average 1. Dropped rows get 0. Rare combinations (e.g. high motion with
    a large subject, or a tilt among pans) are drawn as often as common ones, which is what
    sorting by these scores buys the paper. A column the table lacks is skipped.
    """
    weights = np.zeros(len(scores), dtype=np.float32)
    kept = scores[keep]
    if kept.empty:
        return weights
    strata = np.zeros(len(kept), dtype=np.int64)
    for column in [c for c in columns if c in kept]:
        if column == "camera_motion":
            codes, classes = pd.factorize(kept[column].fillna("unknown"), sort=True)
            strata = strata * len(classes) + codes
            continue
        values = kept[column].to_numpy(dtype=np.float64)
        edges = np.unique(np.nanquantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if np.isfinite(values).any() else []
        strata = strata * (bins + 1) + np.searchsorted(edges, np.nan_to_num(values, nan=-np.inf), side="left")
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    raw = 1.0 / counts[inverse]
    weights[keep] = raw / raw.mean()
    return weights


def split_of(row_id: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` from a hash of the id alone: the same row lands on the same
    side in every run, resume and re-curation, whatever else is in the table, so a
    validation loss is never measured on rows a model was trained on. Raising the fraction
    only moves train rows to val, never back."""
    return "val" if int(hashlib.sha1(row_id.encode()).hexdigest()[:8], 16) / 2**32 < val_fraction else "train"
