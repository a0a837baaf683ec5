"""How images are stored: a plain binary column (``pipeline.tables``), and a table curated
while they were Lance blobs keeps that encoding: a later run appends to it, finalize
compacts it, and the model stages read every row of either kind back as the source's pixels."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from PIL import Image

from curation import job
from pipeline.config import load_config
from pipeline.curated_media import MediaSource
from pipeline.tables import BLOB, IMAGES, is_blob, open_curated
from support.synthetic import photo_like


def _read_back(out: Path) -> dict[str, np.ndarray]:
    """Every image row's pixels as training's loader reads them, by source."""
    rows = open_curated(out / IMAGES).to_table(columns=["source"], with_row_id=True)
    media = MediaSource(str(out), images=True)
    return {source: media.image(row_id)[0] for source, row_id in
            zip(rows.column("source").to_pylist(), rows.column("_rowid").to_pylist())}


def _as_blobs(uri: Path) -> None:
    """Rewrite the table with its image column as blobs, as curation stored it before."""
    table = lance.dataset(str(uri)).to_table()
    index = table.schema.get_field_index("image")
    schema = table.schema.set(index, table.schema.field("image").with_metadata(BLOB))
    lance.write_dataset(table.cast(schema), str(uri), schema=schema, mode="overwrite")


def test_images_are_plain_and_a_blob_table_keeps_its_encoding(tmp_path: Path, ray_local) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    photos = {}
    for seed in range(4):
        photos[str(corpus / f"p{seed}.png")] = photo_like(90 + 8 * seed, 130, seed=seed)
        Image.fromarray(photos[str(corpus / f"p{seed}.png")]).save(corpus / f"p{seed}.png")
    first, out = sorted(photos)[:2], tmp_path / "out"
    config = load_config("tiny", overrides=["curation.images_per_task=2", "curation.commit_every_s=0"])

    job.curate(first, out, config, progress=False)
    assert not is_blob(lance.dataset(str(out / IMAGES)).schema.field("image"))
    read = _read_back(out)
    assert set(read) == set(first) and all(np.array_equal(read[s], photos[s]) for s in first)

    _as_blobs(out / IMAGES)
    job.curate(sorted(photos), out, config, progress=False)  # appends two, then compacts
    ds = lance.dataset(str(out / IMAGES))
    assert is_blob(ds.schema.field("image")) and ds.count_rows() == 4
    read = _read_back(out)
    assert set(read) == set(photos) and all(np.array_equal(read[s], photos[s]) for s in photos)
    assert isinstance(ds.schema.field("image").type, pa.ExtensionType)  # Lance's blob type, as is_blob reads it
