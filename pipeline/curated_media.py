"""The curated tables' media as the model stages read it: a row's stored bytes decoded.

Training's loader, ``i2vgen encode`` and the held-out clips of validation and ``i2vgen eval``
all read media through this one class, so they decode and crop a row the same way; only
decoding failures count as bad media (``media_errors``), never the I/O that fetched the bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.tables import CLIPS, IMAGES, open_curated


class UndecodableMedia(Exception):
    """A row's stored bytes are not media the decoder can read: bad data, not a fault."""


def media_errors() -> tuple[type[BaseException], ...]:
    """What damaged media raises: ``UndecodableMedia`` on opening it, decord's error while
    decoding a clip's frames. Reading the blob (I/O) raises neither."""
    import decord

    return (UndecodableMedia, decord.DECORDError)


class MediaSource:
    """One process's handles on the curated media: a row's blob as decoded frames."""

    def __init__(self, data_dir: str, images: bool) -> None:
        # The version the catalog was read from: row ids are addresses within a version.
        self.datasets = {"clips": open_curated(Path(data_dir) / CLIPS)}
        if images:
            self.datasets["images"] = open_curated(Path(data_dir) / IMAGES)
        # a table curated before the inline column holds every image as a blob (image_columns)
        self.inline_images = images and "image_inline" in self.datasets["images"].schema.names

    def blob(self, table: str, column: str, row_id: int) -> bytes:
        """The stored bytes of one row's media (I/O: its errors are not bad media)."""
        with self.datasets[table].take_blobs(column, ids=[row_id])[0] as f:
            return f.read()

    def image_bytes(self, row_id: int) -> bytes:
        """An image row's stored bytes: inline, or in the blob column (``image_columns``)."""
        if self.inline_images:
            # By row id, as take_blobs reads: the public ``take`` wants positions (a filter on
            # _rowid is public too but took twice as long); pylance is pinned (pyproject).
            rows = self.datasets["images"]._take_rows([row_id], columns=["image_inline"])
            inline = rows.column(0)[0].as_py()
            if inline is not None:
                return inline
        return self.blob("images", "image", row_id)

    def video(self, row_id: int):
        """The clip's stored mp4 as a decord reader (frames are decoded on request)."""
        import decord

        data = self.blob("clips", "video", row_id)
        try:
            return decord.VideoReader(io.BytesIO(data), num_threads=1)
        except (decord.DECORDError, RuntimeError) as err:  # bytes it cannot open: "Error reading ..."
            raise UndecodableMedia(f"clips row {row_id}: {err}") from err

    def image(self, row_id: int) -> np.ndarray:
        """The image as one RGB frame ``(1, H, W, 3)``."""
        from PIL import Image

        data = self.image_bytes(row_id)
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
        except OSError as err:  # PIL's UnidentifiedImageError, a truncated file
            raise UndecodableMedia(f"images row {row_id}: {err}") from err


def stage_crop(meta: dict[str, Any], stage: str, table: str) -> tuple[list[int], float]:
    """The row's crop for the stage and the scale from source pixels to the stored media."""
    crop = meta["crop_base"] if stage == "base" else meta["crop_refiner"]
    return crop, 1.0 if table == "images" else meta["video_width"] / meta["width"]
