"""The validation split: chosen from each row's id alone, written by curation into both
tables, and never drawn by training."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pytest

from commands.main import main
from curation.decisions import split_of
from curation.finalize import finalize
from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.tables import CLIPS, IMAGES
from training.data import Catalog, load_catalog

KEYS = {CLIPS: "clip_id", IMAGES: "image_id"}


def test_the_split_is_a_deterministic_share_of_the_ids() -> None:
    ids = [f"{i * 7919:016x}:{i}-{i + 48}" for i in range(20_000)]
    splits = [split_of(i, 0.05) for i in ids]
    assert splits == [split_of(i, 0.05) for i in ids]
    assert 0.04 < splits.count("val") / len(ids) < 0.06  # the binomial's sd is 0.0015
    assert all(split_of(i, 0.0) == "train" for i in ids)
    assert all(split_of(i, 0.2) == "val" for i, s in zip(ids, splits) if s == "val")  # more held out, none back


def _rows(data: Path, table: str) -> list[dict]:
    return lance.dataset(str(data / table)).to_table(columns=[KEYS[table], "keep", "split"]).to_pylist()


def test_curation_writes_each_rows_split(tiny_curated) -> None:
    fraction = load_config("tiny").curation.val_fraction
    for table, key in KEYS.items():
        rows = _rows(tiny_curated, table)
        assert rows and all(r["split"] == split_of(r[key], fraction) for r in rows)


@pytest.fixture(scope="module")
def halved(tiny_curated, tmp_path_factory) -> Path:
    """The tiny tables finalized again with half the rows held out, so both sides have kept rows."""
    data = tmp_path_factory.mktemp("val_split") / "data"
    shutil.copytree(tiny_curated, data)
    finalize(data, load_config("tiny", overrides=["curation.val_fraction=0.5"]))
    return data


def _ids(data: Path, table: str, split: str | None) -> set[str]:
    return {r[KEYS[table]] for r in _rows(data, table) if r["keep"] and split in (None, r["split"])}


def test_training_draws_no_validation_row(halved) -> None:
    for table, key in KEYS.items():
        assert all(r["split"] == split_of(r[key], 0.5) for r in _rows(halved, table))
        assert _ids(halved, table, "train") and _ids(halved, table, "val")
    for table in KEYS:
        assert _drawn(load_catalog(halved), table) == _ids(halved, table, "train")
        assert _drawn(load_catalog(halved, val_where="false"), table) == _ids(halved, table, None)
        assert _drawn(load_catalog(halved, include_val=True), table) == _ids(halved, table, None)


def _drawn(catalog: Catalog, table: str) -> set[str]:
    return set((catalog.clips if table == CLIPS else catalog.images).column(KEYS[table]).to_pylist())


def test_a_bad_or_all_holding_val_where_is_a_config_error(halved, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="train.val_where: cannot apply 'no_such_column > 1'"):
        load_catalog(halved, val_where="no_such_column > 1")
    with pytest.raises(ConfigError, match="no kept rows outside the validation rows: all .* match 'true'"):
        load_catalog(halved, val_where="true")
    # the CLI flag reaches train.val_where (and fails before any worker starts)
    argv = ["train", "--stage", "base", "--data", str(halved), "--run", str(tmp_path / "run"), "--preset", "tiny"]
    assert main([*argv, "--val-where", "no_such_column > 1"]) == 2
    assert "train.val_where" in capsys.readouterr().err
