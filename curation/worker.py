"""The work on one input, as its sandboxed child process runs it: a video becomes clip rows,
an image one image row, and anything unusable raises ``Rejected`` with its stage and
reason. An I/O error that may pass (an object store's 5xx) is left to propagate as the
``OSError`` it is, so the sandbox can retry it (``curation.sandbox``).

Rows carry their scores and media but not ``aesthetic`` (scored next, by an actor pool that
may hold a GPU) nor the keep / weight decisions (made over the whole table at the end).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from curation.analysis import analysis_size, iter_segments
from curation.buckets import aspect_bucket, frame_fps_pairs
from curation.captioner import input_caption_source
from curation.keyframes import encode_jpeg
from curation.media import encode_clips, storage_size
from curation.probe import Rejected, check_frame_size, probe_video
from curation.scorers.subject import subject_share
from curation.sources import MediaItem, read_bytes, read_caption, resolve
from curation.split import clip_from_segment
from pipeline.config.schema import Config, StagesConfig
from pipeline.frames import centre_crop_box
from pipeline.tables import image_columns

HASH_CHUNK = 8 << 20


def source_sha256(uri: str) -> str:
    fs, path = resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _crops(width: int, height: int, stages: StagesConfig) -> dict[str, Any]:
    base, refiner = stages.base, stages.refiner
    return {
        "bucket": aspect_bucket(width, height),
        "crop_base": centre_crop_box(width, height, base.width, base.height),
        "crop_refiner": centre_crop_box(width, height, refiner.width, refiner.height),
    }


def process_video(item: MediaItem, config: Config) -> tuple[list[dict[str, Any]], float]:
    """Probe, analyse (shots, motion, subject), split and encode one video; also returns
    the video's length in seconds (the unit of curation's throughput)."""
    cfg = config.curation
    info = probe_video(item.uri, cfg.probe)
    digest = source_sha256(item.uri)
    drafts, segments = [], 0
    for segment in iter_segments(item.uri, info, cfg):
        segments += 1
        draft = clip_from_segment(segment, info.fps, cfg.split, cfg.camera)
        if draft is not None:
            drafts.append(draft)
    if not drafts:
        raise Rejected(
            "split",
            f"none of its {segments} segment(s) gives an undamaged clip of at least {cfg.split.min_seconds:g} s",
        )
    size = storage_size(info.width, info.height, config.stages.refiner.width, config.stages.refiner.height)
    videos = encode_clips(item.uri, info, [(d.start, d.end) for d in drafts], size, cfg.media)
    caption = read_caption(item) or ""
    motion_key = "motion_flow" if cfg.scoring.motion == "farneback" else "motion_vectors"
    rows = []
    for draft, video in zip(drafts, videos):
        num_frames = draft.end - draft.start
        scores = {"motion_flow": draft.motion_flow, "motion_vectors": draft.motion_vectors}
        rows.append(
            {
                "clip_id": f"{digest[:16]}:{draft.start}-{draft.end}",
                "source": item.uri,
                "source_sha256": digest,
                "start_frame": draft.start,
                "end_frame": draft.end,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "num_frames": num_frames,
                "caption": caption,
                "motion": scores[motion_key],
                **scores,
                "subject": draft.subject,
                "camera_motion": draft.camera_motion,
                "camera_confidence": draft.camera_confidence,
                "text_area": draft.text_area,
                "caption_source": input_caption_source(caption),
                "fingerprint": draft.fingerprint.tolist(),
                **_crops(info.width, info.height, config.stages),
                "frame_fps": frame_fps_pairs(num_frames, info.fps, config.train.frame_counts, config.train.fps_values),
                "video_width": size[0],
                "video_height": size[1],
                "thumbnail": draft.thumbnail,
                "video": video,
                "keyframes": draft.keyframes,
            }
        )
    return rows, info.duration


def process_image(item: MediaItem, config: Config) -> list[dict[str, Any]]:
    """Check, measure and score one image; its original bytes are stored unchanged."""
    try:
        data = read_bytes(item.uri)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise Rejected("image", f"cannot read ({err})") from err
    if not data:
        raise Rejected("image", "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_frame_size(img.width, img.height, config.curation.probe, "image")  # the header's: nothing decoded yet
            img.load()
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise Rejected("image", f"not a readable image ({err})") from err
    height, width = rgb.shape[:2]
    small_size = analysis_size(width, height, config.curation.shots.analysis_width)
    small = np.asarray(Image.fromarray(rgb).resize(small_size, Image.BILINEAR))
    thumb = encode_jpeg(small)
    caption = read_caption(item) or ""
    return [
        {
            "image_id": hashlib.sha256(data).hexdigest()[:16],
            "source": item.uri,
            "caption": caption,
            "caption_source": input_caption_source(caption),
            "width": width,
            "height": height,
            "subject": subject_share(small),
            **_crops(width, height, config.stages),
            "thumbnail": thumb,
            **image_columns(data),
            "keyframes": [thumb],
        }
    ]


def process_item(item: MediaItem, config: Config) -> tuple[list[dict[str, Any]], float]:
    """Rows for one input and the video-seconds it held (0 for an image)."""
    if item.kind == "video":
        return process_video(item, config)
    return process_image(item, config), 0.0
