"""``i2vgen eval --compare A.json B.json``: is model B better than model A on these clips?

With a handful of held-out clips the spread between clips dwarfs most differences between
models, so a difference of means alone says little. Both runs score the same clips, so
each clip gives a paired difference B - A (the clip's own difficulty cancels), and a
percentile bootstrap over clips gives the 95% interval of their mean: an interval that
holds 0 is no evidence either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.run import CLIP_METRIC, METRICS
from pipeline.config.loader import ConfigError


def _load(path: str | Path) -> dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--compare {path}: not JSON ({err})") from err
    if not isinstance(result, dict) or not isinstance(result.get("clips"), list):
        raise ConfigError(f"--compare {path}: not an eval.json (no clips list)")
    return result


def compare(a_json: str | Path, b_json: str | Path, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per metric both runs hold, the mean paired difference B - A over the clips both
    scored (matched by clip_id) and its 95% percentile-bootstrap interval. Every metric
    uses the same resampled clip sets, so the intervals are about the same draws."""
    a, b = _load(a_json), _load(b_json)
    a_clips = {c["clip_id"]: c for c in a["clips"]}
    pairs = [(a_clips[c["clip_id"]], c) for c in b["clips"] if c["clip_id"] in a_clips]
    if not pairs:
        raise ConfigError(f"--compare: {a_json} and {b_json} share no clip "
                          "(evaluate both on the same --data and --where)")
    unmatched = sorted(set(a_clips).symmetric_difference(c["clip_id"] for c in b["clips"]))
    picks = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    metrics = {}
    for name in METRICS + (CLIP_METRIC,):
        if not all(name in x and name in y for x, y in pairs):
            continue
        before = np.array([x[name] for x, _ in pairs], dtype=np.float64)
        after = np.array([y[name] for _, y in pairs], dtype=np.float64)
        low, high = np.percentile((after - before)[picks].mean(axis=1), [2.5, 97.5])
        metrics[name] = {"a": float(before.mean()), "b": float(after.mean()),
                         "difference": float((after - before).mean()), "low": float(low), "high": float(high)}
    return {"a": str(a_json), "b": str(b_json), "clips": len(pairs), "unmatched": unmatched,
            "resamples": resamples, "seed": seed, "metrics": metrics}


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a plain-text table; the last column names the side an interval
    that excludes 0 favours in value (which side is better depends on the metric)."""
    only_one = f"; in one run only: {len(result['unmatched'])}" if result["unmatched"] else ""
    lines = [f"A: {result['a']}", f"B: {result['b']}", f"paired clips: {result['clips']}{only_one}",
             f"{'metric':<22}{'A':>11}{'B':>11}{'B - A':>11}  {'95% interval':<24}"]
    for name, m in result["metrics"].items():
        verdict = "B > A" if m["low"] > 0 else "B < A" if m["high"] < 0 else ""
        interval = f"[{m['low']:+.4g}, {m['high']:+.4g}]"
        lines.append(f"{name:<22}{m['a']:>11.4g}{m['b']:>11.4g}{m['difference']:>+11.4g}  {interval:<24}{verdict}")
    return "\n".join(lines)
