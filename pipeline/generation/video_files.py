"""What a generated video becomes: H.264 mp4 bytes, a GIF, and a contact-sheet PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import av
import numpy as np
from PIL import Image

from pipeline.allocator import filled_allocations
from pipeline.generation.cascade import Video


def mp4_bytes(frames: Video, fps: int, crf: int = 18) -> bytes:
    """H.264 (yuv420p, so players everywhere take it) of uint8 ``(F, H, W, 3)`` frames.

    x264 reads memory it has not written, so allocations are filled while it encodes
    (``pipeline.allocator.filled_allocations``): the same seed gives the same file, not just
    the same frames.
    """
    height, width = frames.shape[1:3]
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {width}x{height}")
    buffer = io.BytesIO()
    with filled_allocations(), av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def gif_bytes(frames: Video, fps: int) -> bytes:
    """An endlessly looping GIF, for previews where a player is not at hand."""
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def contact_sheet(frames: Video, columns: int = 8, width: int = 1600) -> Image.Image:
    """All frames in reading order on one image, scaled so a row is at most ``width`` wide."""
    count, height, frame_w = frames.shape[:3]
    columns = min(columns, count)
    scale = min(1.0, width / (columns * frame_w))
    cell_w, cell_h = max(1, round(frame_w * scale)), max(1, round(height * scale))
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    for i, frame in enumerate(frames):
        tile = Image.fromarray(frame).resize((cell_w, cell_h), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((i % columns) * cell_w, (i // columns) * cell_h))
    return sheet


def write_outputs(
    frames: Video, fps: int, mp4: str | Path, gif: Optional[str | Path] = None, sheet: Optional[str | Path] = None,
    crf: int = 18,
) -> list[Path]:
    """The mp4, and the GIF and contact sheet where asked; returns the paths written."""
    written = [Path(mp4)]
    Path(mp4).parent.mkdir(parents=True, exist_ok=True)
    Path(mp4).write_bytes(mp4_bytes(frames, fps, crf))
    if gif:
        Path(gif).write_bytes(gif_bytes(frames, fps))
        written.append(Path(gif))
    if sheet:
        contact_sheet(frames).save(sheet)
        written.append(Path(sheet))
    return written
