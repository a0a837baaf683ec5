"""How images are stored (``pipeline.tables.image_columns``): small ones inline in a plain
column, larger ones as Lance blobs; and a table curated while every image was a blob keeps
working: a later run adds the inline column, appends to it, finalize compacts it, and the
model stages read every row of either kind back as the source's pixels."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from curation import job
from curation.finalize import _record_versions
from pipeline.config import load_config
from pipeline.curated_media import MediaSource
from pipeline.tables import BLOB, IMAGES, INLINE_IMAGE_BYTES, open_curated
from support.synthetic import photo_like


def _read_back(out: Path) -> dict[str, np.ndarray]:
    """Every image row's pixels as training's loader reads them, by source."""
    rows = open_curated(out / IMAGES).to_table(columns=["source"], with_row_id=True)
    media = MediaSource(str(out), images=True)
    return {source: media.image(row_id)[0] for source, row_id in
            zip(rows.column("source").to_pylist(), rows.column("_rowid").to_pylist())}


def _photos(folder: Path) -> dict[str, np.ndarray]:
    """Two small PNGs (a few KB) and two large ones (noisy, several hundred KB), by path."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    photos = {}
    for seed in range(4):
        pixels = photo_like(90 + 8 * seed, 130, seed=seed)
        if seed >= 2:  # noise no codec squeezes under the inline limit
            pixels = np.tile(pixels, (4, 4, 1)) ^ rng.integers(0, 64, (360 + 32 * seed, 520, 3), dtype=np.uint8)
        path = folder / f"p{seed}.png"
        Image.fromarray(pixels).save(path)
        photos[str(path)] = pixels
    return photos


def _as_before_the_split(uri: Path) -> None:
    """Rewrite the table as curation stored it before the inline column (every image's
    bytes in the blob column, no inline column), as the curated version readers open."""
    table = lance.dataset(str(uri)).to_table()
    everything = pc.coalesce(table.column("image_inline"), lance.dataset(str(uri)).to_table(
        columns=["image"], blob_handling="all_binary").column("image"))
    table = table.drop_columns(["image_inline"])
    table = table.set_column(table.schema.get_field_index("image"), pa.field("image", pa.large_binary(), metadata=BLOB),
                             everything)
    lance.write_dataset(table, str(uri), schema=table.schema, mode="overwrite")
    _record_versions(uri.parent)


def test_small_images_are_inline_large_ones_blobs_and_an_old_table_keeps_working(tmp_path: Path, ray_local) -> None:
    photos = _photos(tmp_path / "corpus")
    sizes = {path: Path(path).stat().st_size for path in photos}
    assert sorted(size <= INLINE_IMAGE_BYTES for size in sizes.values()) == [False, False, True, True]
    first, out = sorted(photos)[::2], tmp_path / "out"  # one small, one large
    config = load_config("tiny", overrides=["curation.images_per_task=2", "curation.commit_every_s=0"])

    job.curate(first, out, config, progress=False)
    stored = lance.dataset(str(out / IMAGES)).to_table(columns=["source", "image_inline"])
    inline = dict(zip(stored.column("source").to_pylist(), stored.column("image_inline").to_pylist()))
    assert {path: value is not None for path, value in inline.items()} == {
        path: sizes[path] <= INLINE_IMAGE_BYTES for path in first}
    read = _read_back(out)
    assert set(read) == set(first) and all(np.array_equal(read[s], photos[s]) for s in first)

    _as_before_the_split(out / IMAGES)
    assert "image_inline" not in open_curated(out / IMAGES).schema.names
    read = _read_back(out)  # the old layout reads as before
    assert set(read) == set(first) and all(np.array_equal(read[s], photos[s]) for s in first)

    job.curate(sorted(photos), out, config, progress=False)  # adds the column, appends two, compacts
    ds = lance.dataset(str(out / IMAGES))
    assert ds.count_rows() == 4 and len(ds.get_fragments()) == 1
    read = _read_back(out)
    assert set(read) == set(photos) and all(np.array_equal(read[s], photos[s]) for s in photos)
