"""Compaction of media tables: planned and committed by the caller, rewritten in Ray tasks
when large, fragments sized and read by bytes; the rows and their media, blob columns or
plain ones, come through unchanged."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

import pipeline.compaction as compaction
from pipeline.compaction import compact, compaction_options
from pipeline.tables import BLOB, MINIBLOCK

SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("media", pa.large_binary(), metadata=BLOB)])
# plain values in the page layout small images are stored with (pipeline.tables)
PLAIN = pa.schema([pa.field("id", pa.string()), pa.field("media", pa.large_binary(), metadata=MINIBLOCK)])
ROW_BYTES = 20_000


def _table(tmp_path: Path, fragments: int = 12, rows: int = 10, schema: pa.Schema = SCHEMA) -> tuple[str, dict[str, bytes]]:
    """``fragments`` appends of ``rows`` rows of random media; the row ``f0r0`` deleted."""
    uri = str(tmp_path / "media.lance")
    rng = np.random.default_rng(0)
    media: dict[str, bytes] = {}
    for f in range(fragments):
        ids = [f"f{f}r{r}" for r in range(rows)]
        blobs = [rng.bytes(ROW_BYTES) for _ in ids]
        media.update(zip(ids, blobs))
        table = pa.table({"id": ids, "media": pa.array(blobs, pa.large_binary())}, schema=schema)
        lance.write_dataset(table, uri, schema=schema, mode="append" if f else "create")
    lance.dataset(uri).delete("id = 'f0r0'")
    del media["f0r0"]
    return uri, media


def _contents(uri: str) -> dict[str, bytes]:
    ds = lance.dataset(uri)
    if not isinstance(ds.schema.field("media").type, pa.ExtensionType):  # a plain column, not Lance's blob type
        table = ds.to_table(columns=["id", "media"])
        return dict(zip(table.column("id").to_pylist(), table.column("media").to_pylist()))
    ids = ds.to_table(columns=["id"]).column("id").to_pylist()
    blobs = ds.take_blobs("media", indices=list(range(len(ids))))
    read = {}
    for row_id, blob in zip(ids, blobs):
        with blob as f:
            read[row_id] = f.read()
    return read


@pytest.mark.parametrize("schema", [SCHEMA, PLAIN], ids=["blob", "plain"])
def test_compaction_here_keeps_every_row_and_value_and_drops_the_deleted(tmp_path: Path, schema: pa.Schema,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    uri, media = _table(tmp_path, schema=schema)
    # batches of 3 rows' worth of bytes: a task reads its 119 rows in many batches
    monkeypatch.setattr(compaction, "BATCH_BYTES", 3 * ROW_BYTES)
    assert 2 <= compaction_options(lance.dataset(uri))["batch_size"] <= 3
    done = compact(uri)
    assert (done.where, done.fragments_removed, done.fragments_added) == ("here", 12, 1)
    assert len(lance.dataset(uri).get_fragments()) == 1
    assert _contents(uri) == media
    assert compact(uri).tasks == 0  # nothing left to do: a rerun rewrites nothing


def test_fragments_are_sized_by_bytes_not_lance_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, media = _table(tmp_path)
    # 40 rows' worth of bytes per fragment: 119 rows become 3 fragments
    monkeypatch.setattr(compaction, "TARGET_FRAGMENT_BYTES", 40 * ROW_BYTES)
    target = compaction_options(lance.dataset(uri))["target_rows_per_fragment"]
    assert 30 <= target <= 40  # the files hold a little more than the media
    done = compact(uri)
    rows = [f.count_rows() for f in lance.dataset(uri).get_fragments()]
    # Lance fills a new fragment with whole old ones (10 rows each), up to the target's reach
    assert done.fragments_added == len(rows) >= 3 and max(rows) <= target + 10 and sum(rows) == 119
    assert _contents(uri) == media


def test_a_large_plan_is_rewritten_in_ray_tasks(tmp_path: Path, ray_local) -> None:
    uri, media = _table(tmp_path)
    here_uri, _ = _table(tmp_path / "here")
    assert compact(here_uri).where == "here"  # under in_process_bytes
    done = compact(uri, in_process_bytes=0)
    assert (done.where, done.tasks, done.fragments_removed) == ("ray", 1, 12)
    assert _contents(uri) == media == _contents(here_uri)
