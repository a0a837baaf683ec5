"""The training draw plan: micro-batch sizes by frame count (a token budget or a table), the
paper's shape ratios kept per micro-batch, rows drawn by weight, plans that depend only on the
seed and the index, and the driver's summary agreeing with the catalog the loaders read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.tables import FRAME_FPS
from training.data import (
    Catalog,
    Planner,
    load_catalog,
    micro_batch_sizes,
    summarize_catalog,
    tokens_per_sample,
    validate_shapes,
)

PAPER_SHAPES = ["train.frame_counts=[1,8,16,32]", "train.frame_weights=[1,1,1,5]",
                "train.fps_values=[1,4,8,16]", "train.fps_weights=[1,2,4,1]"]


def _catalog(rows: int, images: int = 0, seed: int = 0) -> Catalog:
    """Clips that each supply a random subset of the paper's (frames, fps) pairs, with random
    weights, and optionally images: the small columns the planner reads."""
    rng = np.random.default_rng(seed)
    pairs = [{"frames": f, "fps": r} for f in (1, 8, 16, 32) for r in (1, 4, 8, 16)]
    frame_fps = [[p for p in pairs if rng.random() < 0.7] or pairs[:1] for _ in range(rows)]
    clips = pa.table({
        "frame_fps": pa.array(frame_fps, pa.list_(FRAME_FPS)),
        "weight": pa.array(rng.uniform(0.1, 2.0, rows), pa.float32()),
        "_rowid": pa.array(np.arange(rows), pa.uint64()),
    })
    image_table = None
    if images:
        image_table = pa.table({"weight": pa.array(np.ones(images), pa.float32()),
                                "_rowid": pa.array(np.arange(images), pa.uint64())})
    return Catalog(clips, image_table, "unused")


def test_a_token_budget_sizes_each_frame_count_and_a_table_overrides_it() -> None:
    config = load_config("tiny", overrides=PAPER_SHAPES)
    per_frame = tokens_per_sample(config, "base", 1)
    assert per_frame == (64 // 4) * (112 // 4)  # the tiny base's latent grid
    budget = 2 * tokens_per_sample(config, "base", 32)  # what the default 2 x 32 frames hold
    sized = load_config("tiny", overrides=PAPER_SHAPES + [f"train.tokens_per_micro_batch={budget}"])
    assert micro_batch_sizes(sized, "base") == {1: 64, 8: 8, 16: 4, 32: 2}
    assert micro_batch_sizes(config, "base") == {1: 2, 8: 2, 16: 2, 32: 2}  # off: micro_batch for all
    table = load_config("tiny", overrides=PAPER_SHAPES + ["train.micro_batch_sizes=[16,4,2,1]"])
    assert micro_batch_sizes(table, "base") == {1: 16, 8: 4, 16: 2, 32: 1}

    small = load_config("tiny", overrides=PAPER_SHAPES + [f"train.tokens_per_micro_batch={budget // 4}"])
    with pytest.raises(ConfigError, match=r"train.tokens_per_micro_batch: .* no 32-frame sample"):
        micro_batch_sizes(small, "base")
    with pytest.raises(ConfigError, match="train.micro_batch_sizes: set it or train.tokens_per_micro_batch"):
        load_config("tiny", overrides=PAPER_SHAPES + ["train.micro_batch_sizes=[1,1,1,1]",
                                                      "train.tokens_per_micro_batch=100000"])
    with pytest.raises(ConfigError, match="train.micro_batch_sizes: needs one size"):
        load_config("tiny", overrides=PAPER_SHAPES + ["train.micro_batch_sizes=[4,2]"])


def test_plans_keep_the_shape_ratios_per_micro_batch_at_their_budgeted_sizes() -> None:
    """Shapes are drawn per micro-batch at frame_weights x fps_weights whatever the sizes (so
    each shape's share of the objective is unchanged), each at its frame count's size,
    and rows by their weight among those that supply the shape."""
    budget = 2 * tokens_per_sample(load_config("tiny"), "base", 32)
    config = load_config("tiny", overrides=PAPER_SHAPES + [f"train.tokens_per_micro_batch={budget}",
                                                          "train.spare_samples=0"])
    catalog = _catalog(400, images=50)
    planner = Planner(catalog, config, "base")
    plans = [planner.plan(i) for i in range(6000)]
    frames = Counter(p["frames"] for p in plans)
    for count, weight in zip((1, 8, 16, 32), (1, 1, 1, 5)):
        assert frames[count] / len(plans) == pytest.approx(weight / 8, abs=0.02)
    fps = Counter(p["fps"] for p in plans)
    for value, weight in zip((1, 4, 8, 16), (1, 2, 4, 1)):
        assert fps[value] / len(plans) == pytest.approx(weight / 8, abs=0.02)
    sizes = {1: 64, 8: 8, 16: 4, 32: 2}
    assert all(len(p["rows"]) == p["size"] == sizes[p["frames"]] for p in plans)

    # Every drawn row supplies its shape; images only stand in for single frames.
    supplies = catalog.clips.column("frame_fps").to_pylist()
    for p in plans:
        for table, row in zip(p["tables"], p["rows"]):
            assert table == "clips" and {"frames": p["frames"], "fps": p["fps"]} in supplies[row] or (
                table == "images" and p["frames"] == 1)
    # Rows of one shape come by weight: the heaviest fifth is drawn more than the lightest.
    weights = catalog.clips.column("weight").to_numpy()
    drawn = Counter(r for p in plans if p["frames"] == 32 for t, r in zip(p["tables"], p["rows"]))
    order = np.argsort(weights)
    light, heavy = order[: len(order) // 5], order[-len(order) // 5:]
    assert sum(drawn[r] for r in heavy) > 3 * sum(drawn[r] for r in light)


def test_a_plan_depends_only_on_the_seed_and_its_index() -> None:
    config = load_config("tiny", overrides=PAPER_SHAPES)
    catalog = _catalog(300, images=10)
    first, again = Planner(catalog, config, "base"), Planner(catalog, config, "base")
    assert [first.plan(i) for i in (7, 3, 1000)] == [again.plan(i) for i in (7, 3, 1000)]
    reseeded = Planner(catalog, load_config("tiny", overrides=PAPER_SHAPES + ["train.seed=1"]), "base")
    assert [reseeded.plan(i)["rows"] for i in range(5)] != [first.plan(i)["rows"] for i in range(5)]
    overfit = Planner(catalog, load_config("tiny", overrides=PAPER_SHAPES + ["train.overfit_batches=2"]), "base")
    assert overfit.plan(4)["rows"] == overfit.plan(0)["rows"] == first.plan(0)["rows"]


def test_the_drivers_summary_agrees_with_the_catalog(tiny_curated: Path) -> None:
    """The driver checks the tables by a streaming scan; the loaders read the catalog. The two
    must see the same rows and shapes, and fail on the same configs."""
    summary = summarize_catalog(tiny_curated)
    catalog = load_catalog(tiny_curated)
    assert summary.clips == catalog.clips.num_rows > 0
    assert summary.images == catalog.images.num_rows > 0
    shapes = Counter((p["frames"], p["fps"]) for pairs in catalog.clips.column("frame_fps").to_pylist() for p in pairs)
    assert summary.shapes == dict(shapes)
    config = load_config("tiny")
    validate_shapes(summary, config, "base")
    assert Planner(catalog, config, "base").shapes == [
        (f, r) for f in config.train.frame_counts for r in config.train.fps_values if summary.rows_for(f, r)]
    unsupplied = load_config("tiny", overrides=["train.frame_counts=[31]", "train.frame_weights=[1]"])
    for check in (lambda: validate_shapes(summary, unsupplied, "base"), lambda: Planner(catalog, unsupplied, "base")):
        with pytest.raises(ConfigError, match="train.frame_counts: no kept row"):
            check()
