"""Keep or drop, how often to draw, and train or validation: recomputed on every run (the
first two from the stored scores, so new thresholds need no re-scoring; the split from the
row's id alone)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.config.schema import FiltersConfig


def keep_and_reasons(scores: pd.DataFrame, cfg: FiltersConfig) -> tuple[np.ndarray, list[str | None]]:
    """Apply the thresholds; the reason names the first failed check and its numbers.

    ``scores`` has ``aesthetic`` and ``subject`` columns, and ``motion`` for clips.
    """
    checks = [
        ("aesthetic", lambda v: v < cfg.min_aesthetic, lambda v: f"aesthetic {v:.2f} < {cfg.min_aesthetic:g}"),
        ("motion", lambda v: v < cfg.min_motion, lambda v: f"motion {v:.4f} < {cfg.min_motion:g} (too static)"),
        ("motion", lambda v: v > cfg.max_motion, lambda v: f"motion {v:.3f} > {cfg.max_motion:g} (too fast)"),
        ("subject", lambda v: v < cfg.min_subject, lambda v: f"subject {v:.2f} < {cfg.min_subject:g}"),
        ("subject", lambda v: v > cfg.max_subject, lambda v: f"subject {v:.2f} > {cfg.max_subject:g}"),
    ]
    reasons: list[str | None] = [None] * len(scores)
    for column, fails, explain in checks:
        if column not in scores:
            continue
        for i, value in enumerate(scores[column].to_numpy(dtype=np.float64)):
            if reasons[i] is None and np.isnan(value):
                reasons[i] = f"{column} could not be scored"
            elif reasons[i] is None and fails(value):
                reasons[i] = explain(value)
    keep = np.array([r is None for r in reasons], dtype=bool)
    return keep, reasons


def balancing_weights(scores: pd.DataFrame, keep: np.ndarray, bins: int) -> np.ndarray:
    """Sampling weights that draw each stratum of the scores equally often.

    Kept rows are binned by quantiles of each score column (aesthetic, motion, subject);
    a row's weight is 1 / (rows in its stratum), scaled so kept weights average 1. Dropped
    rows get 0. Rare combinations (e.g. high motion with a large subject) are drawn as
    often as common ones, which is what sorting by these scores buys the paper.
    """
    weights = np.zeros(len(scores), dtype=np.float32)
    kept = scores[keep]
    if kept.empty:
        return weights
    strata = np.zeros(len(kept), dtype=np.int64)
    for column in [c for c in ("aesthetic", "motion", "subject") if c in kept]:
        values = kept[column].to_numpy(dtype=np.float64)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        strata = strata * (bins + 1) + np.searchsorted(edges, values, side="left")
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
