"""``i2vgen eval``: the metrics on videos whose answer is known, the held-out reader's
refusals, and one evaluation of untrained tiny stages through the CLI (shared by the
tests of its files and of ``--compare``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import cv2
import lance
import numpy as np
import pyarrow as pa
import pytest

from commands.evaluate import cmd_eval_spectrum
from commands.main import build_parser, main
from evaluation.compare import compare
from evaluation.metrics import (
    clip_consistency, continuation_psnr, first_frame_psnr, flicker, freeze_frame_psnr, mean_flow_magnitude,
    motion_agreement, psnr,
)
from evaluation.run import METRICS
from pipeline.config.loader import ConfigError
from pipeline.heldout import heldout_clips

# Every kept clip of the tiny corpus: its split column (if any) puts them all in training.
WHERE_ALL = "true"


def _main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _pan(frames: int = 8, step: int = 2, height: int = 64, width: int = 112) -> np.ndarray:
    """A smooth texture seen through a window moving right ``step`` px a frame (the picture
    moves left), uint8 ``(F, H, W, 3)``."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((height, width + step * frames)).astype(np.float32), (0, 0), 3)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    grey = np.stack([texture[:, k * step : k * step + width] for k in range(frames)]).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def test_metrics_on_known_videos(tiny) -> None:
    from pipeline.models.build import build_clip

    real = _pan()
    frozen = np.repeat(real[:1], len(real), axis=0)
    # The input moved as the real clip moves (wrapping around instead of revealing new texture).
    moving = np.stack([np.roll(real[0], -2 * k, axis=1) for k in range(len(real))])

    assert flicker(frozen) == 0.0 and 0 < flicker(real) < 1
    assert continuation_psnr(frozen, real) == freeze_frame_psnr(real[0], real)
    assert motion_agreement(moving, real) > 0.95
    assert motion_agreement(moving[::-1], real) < -0.95
    assert continuation_psnr(moving, real) > freeze_frame_psnr(real[0], real) + 5
    assert mean_flow_magnitude(frozen, 8) < tiny.curation.filters.min_motion < mean_flow_magnitude(real, 8)
    # Identical frames: finite, as high as the closest differing pair (one level in one value).
    nudged = real[0].copy()
    nudged[0, 0, 0] += 1
    assert first_frame_psnr(real, real[0]) == psnr(nudged, real[0]) > psnr(real[1], real[0])
    assert clip_consistency(build_clip(tiny.clip), frozen, real[0]) == pytest.approx(1.0, abs=1e-5)


def _eval_json(clips: list[dict], **means: float) -> dict:
    return {**means, "clips": clips, "settings": {}}


def test_compare_pairs_clips_by_id(tmp_path: Path) -> None:
    a = [{"clip_id": c, "first_frame_psnr": v, "flicker": 0.1} for c, v in (("x", 10.0), ("y", 20.0), ("z", 5.0))]
    b = [{"clip_id": c, "first_frame_psnr": v + 1.0, "flicker": 0.1} for c, v in (("y", 20.0), ("x", 10.0), ("w", 0.0))]
    (tmp_path / "a.json").write_text(json.dumps(_eval_json(a)))
    (tmp_path / "b.json").write_text(json.dumps(_eval_json(b)))
    result = compare(tmp_path / "a.json", tmp_path / "b.json", resamples=200)
    assert result["clips"] == 2 and result["unmatched"] == ["w", "z"]
    psnr_diff = result["metrics"]["first_frame_psnr"]
    assert psnr_diff["difference"] == pytest.approx(1.0) and psnr_diff["low"] == pytest.approx(1.0)
    assert set(result["metrics"]) == {"first_frame_psnr", "flicker"}  # only what both runs hold


def test_heldout_refusals(tmp_path: Path, tiny_curated: Path) -> None:
    with pytest.raises(ConfigError, match="--where.*no kept row"):
        heldout_clips(tiny_curated, "clip_id = 'none'", 2, 8, 8, (112, 64))
    with pytest.raises(ConfigError, match="holds 32 frames"):
        heldout_clips(tiny_curated, WHERE_ALL, 2, 32, 8, (112, 64))
    # A table curated before the split column: a where on it names the option to change.
    old = pa.table({"clip_id": ["a"], "keep": [True]})
    lance.write_dataset(old, str(tmp_path / "clips.lance"))
    with pytest.raises(ConfigError, match="--where .*no split column"):
        heldout_clips(tmp_path, "split = 'val'", 2, 8, 8, (112, 64))


def test_cli_usage_and_errors(tmp_path: Path, tiny_curated: Path, tiny_exports: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["eval", "--data", str(tiny_curated), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--base" in err.getvalue()
    code, _, err_text = _main("eval", "--base", str(tiny_exports["base"]), "--data", str(tiny_curated),
                              "--where", "clip_id = 'none'", "--out", str(tmp_path))
    assert code == 2 and "no kept row" in err_text and "Traceback" not in err_text
    code, _, err_text = _main("eval", "--base", str(tiny_exports["base"]), "--data", str(tmp_path / "missing"),
                              "--out", str(tmp_path))
    assert code == 2 and "does not exist" in err_text
    assert build_parser().parse_args(["eval", "spectrum", "a.mp4", "b.mp4", "--out", "s"]).func is cmd_eval_spectrum


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_curated: Path, tiny_exports: dict[str, Path]) -> Path:
    """One evaluation of the untrained tiny base on two clips at two sampling steps."""
    out = tmp_path_factory.mktemp("eval")
    code, stdout, stderr = _main("eval", "--base", str(tiny_exports["base"]), "--data", str(tiny_curated),
                                 "--where", WHERE_ALL, "--clips", "2", "--steps", "2", "--out", str(out))
    assert code == 0, stderr
    assert json.loads(stdout[: stdout.rindex("}") + 1])["first_frame_psnr"] > 0
    return out


def test_eval_writes_metrics_and_page(evaluated: Path) -> None:
    result = json.loads((evaluated / "eval.json").read_text())
    assert len(result["clips"]) == 2 and "clip_consistency" not in result  # the tiny CLIP has no weights
    for name in METRICS:
        values = [clip[name] for clip in result["clips"]]
        assert all(math.isfinite(v) for v in values), name
        assert result[name] == pytest.approx(float(np.mean(values))), name
    assert {clip["dynamic_degree"] for clip in result["clips"]} <= {0, 1}
    assert result["settings"] | {"base": None, "data": None} == {
        "base": None, "refiner": None, "data": None, "where": WHERE_ALL, "seed": 0, "steps": 2, "clips": 2,
        "preset": "tiny", "frames": 8, "fps": 8, "size": [112, 64], "dynamic_threshold": 0.002,
    }
    page = (evaluated / "index.html").read_text()
    for clip in result["clips"]:
        assert clip["clip_id"] in page
        assert all((evaluated / clip[key]).stat().st_size > 0 for key in ("input", "generated", "real", "strip"))


def test_compare_of_a_run_with_itself(evaluated: Path, tmp_path: Path) -> None:
    same = tmp_path / "same.json"
    shutil.copy(evaluated / "eval.json", same)
    code, stdout, _ = _main("eval", "--compare", str(evaluated / "eval.json"), str(same), "--out", str(tmp_path))
    assert code == 0 and "motion_agreement" in stdout
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["clips"] == 2 and set(result["metrics"]) == set(METRICS)
    for name, m in result["metrics"].items():
        assert m["difference"] == 0 and m["low"] <= 0 <= m["high"], name
