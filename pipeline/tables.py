"""The Lance table schemas: the contract between curation (writer) and training (reader).

Curation writes three tables under its output folder; training reads only ``keep`` rows of
the first two, less the validation rows (``VAL_ROWS`` unless ``train.val_where`` says
otherwise). A clip's mp4 (megabytes) and an encoded row's tensors are Lance blob columns, so
a reader fetches one value, or ranges of it, without loading its neighbours
(``LanceDataset.take_blobs``). An image's bytes go to one of two columns by their size
(``image_columns``): up to ``INLINE_IMAGE_BYTES`` a plain binary column, ``image_inline``,
larger a blob column, ``image``. Lance writes and compacts a blob column value by value,
which for small images cost more than the images; plain values are written in pages, which
for larger ones cost more (measured at ``INLINE_IMAGE_BYTES``). Tables curated before this split
hold every image in ``image``; a later run adds the inline column, null in their rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

CLIPS = "clips.lance"
IMAGES = "images.lance"
REJECTS = "rejects.lance"

BLOB = {"lance-encoding:blob": "true"}
# Lance's page layout for plain values that are small next to a page. Without it Lance 14
# lays out large values one by one ("fullzip"), which wrote 2,048 images of 150 KB in
# 3.3 s of CPU against 0.65 s.
MINIBLOCK = {"lance-encoding:structural-encoding": "miniblock"}
# Images up to this size are stored inline. Per 2,048 incompressible values, in CPU seconds
# to write 8 fragments and then compact them (medians of 3, scratch script, pylance 14.0.2):
# 10 KB: 0.06 + 0.08 inline, 0.18 + 0.42 as blobs; 40 KB: 0.14 + 0.13 against 0.21 + 0.52;
# 80 KB: 0.35 + 0.59 against 0.21 + 0.45; 150 KB: 0.69 + 0.55 against 0.45 + 0.58.
INLINE_IMAGE_BYTES = 64 << 10


def image_columns(data: bytes) -> dict[str, Optional[bytes]]:
    """An image row's two byte columns: the encoded image in the one its size picks (see
    ``INLINE_IMAGE_BYTES``), null in the other."""
    inline = len(data) <= INLINE_IMAGE_BYTES
    return {"image_inline": data if inline else None, "image": None if inline else data}


# One (frames, fps) pair a clip can supply: `frames` frames spaced at 1/fps seconds.
FRAME_FPS = pa.struct([("frames", pa.int32()), ("fps", pa.int32())])
# A centre crop [x, y, w, h] in source pixels with a stage's aspect ratio.
CROP = pa.list_(pa.int32())
# curation.scorers.fingerprint.clip_fingerprint: 63 numbers for each of a clip's 3 keyframes.
FINGERPRINT = pa.list_(pa.float32(), 3 * 63)
# curation.stages.score: the mean of the keyframes' CLIP ViT-L/14 image embeddings, scaled to
# unit length; null for rows scored without CLIP weights. 768 is
# pipeline.models.aesthetic_head.LAION_EMBED_DIM, written out so that readers of these
# schemas do not import torch.
CLIP_EMBEDDING = pa.list_(pa.float32(), 768)

# Columns every scored row has; curation's finalize step (re)computes them on every run:
# keep / drop_reason / weight from the scores and the configured thresholds (so thresholds
# change without re-scoring), split from the row's id and curation.val_fraction.
DECISION_FIELDS = [
    pa.field("keep", pa.bool_()),
    pa.field("drop_reason", pa.string()),
    pa.field("weight", pa.float32()),
    pa.field("split", pa.string()),  # "train" | "val" (curation.decisions.split_of)
]
# A clip's decision beside those: the clip_id of the copy kept when this clip shows the same
# footage as another (curation.near_duplicates), else null.
NEAR_DUPLICATE_FIELD = pa.field("near_duplicate_of", pa.string())
# The validation rows when train.val_where is unset: training never draws them.
VAL_ROWS = "split = 'val'"

CLIPS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string()),  # sha256(source bytes)[:16] + ":" + start-end
        pa.field("source", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("start_frame", pa.int64()),  # inclusive, in the source's frames
        pa.field("end_frame", pa.int64()),  # exclusive
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),  # source size
        pa.field("height", pa.int32()),
        pa.field("num_frames", pa.int32()),
        pa.field("caption", pa.string()),
        pa.field("aesthetic", pa.float32()),  # ~1..10
        pa.field("motion", pa.float32()),  # frame diagonals per second (the configured method)
        pa.field("motion_flow", pa.float32()),  # Farneback optical flow
        pa.field("motion_vectors", pa.float32()),  # the codec's motion vectors
        pa.field("subject", pa.float32()),  # 0..1 share of the frame
        # static | pan_left | pan_right | tilt_up | tilt_down | zoom_in | zoom_out | rotate |
        # shaky (curation/scorers/camera.py), and how sure, 0..1; null without a flow inside
        pa.field("camera_motion", pa.string()),
        pa.field("camera_confidence", pa.float32()),
        pa.field("text_area", pa.float32()),  # 0..1 share of the frame covered by text (mean at 1 fps)
        pa.field("caption_source", pa.string()),  # input | model:<name> | none
        pa.field("fingerprint", FINGERPRINT),  # keyframes' layout, for near-duplicates
        pa.field("clip_embedding", CLIP_EMBEDDING),  # keyframes' content, for near-duplicates and search
        pa.field("bucket", pa.string()),  # aspect-ratio bucket, e.g. "16:9"
        pa.field("crop_base", CROP),
        pa.field("crop_refiner", CROP),
        pa.field("frame_fps", pa.list_(FRAME_FPS)),
        pa.field("video_width", pa.int32()),  # size of the stored mp4
        pa.field("video_height", pa.int32()),
        pa.field("thumbnail", pa.binary()),  # JPEG of the middle frame, for reports
        pa.field("video", pa.large_binary(), metadata=BLOB),  # H.264 mp4
        *DECISION_FIELDS,
        NEAR_DUPLICATE_FIELD,
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),  # sha256 of the image bytes [:16]
        pa.field("source", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("aesthetic", pa.float32()),
        pa.field("subject", pa.float32()),
        pa.field("caption_source", pa.string()),  # input | model:<name> | none
        pa.field("clip_embedding", CLIP_EMBEDDING),
        pa.field("bucket", pa.string()),
        pa.field("crop_base", CROP),
        pa.field("crop_refiner", CROP),
        pa.field("thumbnail", pa.binary()),
        # the original encoded bytes, in one of the two (image_columns)
        pa.field("image_inline", pa.large_binary(), metadata=MINIBLOCK),
        pa.field("image", pa.large_binary(), metadata=BLOB),
        *DECISION_FIELDS,
    ]
)

# ``i2vgen encode``: one companion table per stage, ``encoded_<stage>.lance``, joined to the
# curated tables on ``id``. It is a table beside them rather than columns inside them, so a
# later curation run still appends to clips.lance and a stage can be re-encoded (new VAE
# weights, new size) without rewriting the media.
ENCODED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # clip_id or image_id; "" for the empty prompt's tokens
        pa.field("table", pa.string()),  # clips | images | prompt
        pa.field("frames", pa.int32()),  # latent frames on the grid (1 for images and prompt)
        # safetensors bytes: "latents" (T, C, h, w) on a grid of encode.grid_fps, and as the
        # stage needs them "image_embeds" (T, 1, D) per grid frame and "text" (1, L, D).
        pa.field("tensors", pa.large_binary(), metadata=BLOB),
    ]
)


def encoded_table(stage: str) -> str:
    return f"encoded_{stage}.lance"


REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("kind", pa.string()),  # video | image | manifest-row
        pa.field("stage", pa.string()),  # source | probe | decode | split | image | worker | dedupe
        pa.field("reason", pa.string()),
        # A transient failure (I/O error, lost worker, out-of-memory kill) that outlived its
        # retries: the next run tries the file again. Terminal rejects are never retried.
        pa.field("retryable", pa.bool_()),
        pa.field("attempts", pa.int32()),  # tries over all runs
    ]
)

# Which version of each table curation's last finished run left: ``{table: version}``, in a
# file beside the tables, replaced in one rename. Readers open those versions, so a run in
# progress, or one killed anywhere, never shows them half-written or mismatched tables.
CURATED_VERSIONS = "curated.json"


def curated_versions(folder: str | Path) -> dict[str, int]:
    path = Path(folder) / CURATED_VERSIONS
    return json.loads(path.read_text()) if path.exists() else {}


def open_curated(uri: str | Path) -> Any:
    """The Lance dataset at ``uri`` as the last finished curation run left it (the latest
    version for a folder curated before the versions were recorded)."""
    import lance

    version = curated_versions(Path(uri).parent).get(Path(uri).name)
    return lance.dataset(str(uri), version=version)


def without_decisions(schema: pa.Schema) -> pa.Schema:
    """The schema as chunks are written, before finalize adds the decision columns."""
    names = {f.name for f in DECISION_FIELDS} | {NEAR_DUPLICATE_FIELD.name}
    return pa.schema([f for f in schema if f.name not in names])
