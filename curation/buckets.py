"""Training buckets: the aspect-ratio class and the (frames, fps) pairs a clip can supply for
the paper's dynamic frames and FPS. (Each stage's crop box is ``pipeline.frames.centre_crop_box``,
shared with training and inference.)"""

from __future__ import annotations

import math

# Frame counts and sampling rates the paper trains on (1:1:1:5 and 1:2:4:1).
FRAME_COUNTS = (1, 8, 16, 32)
SAMPLE_FPS = (1, 4, 8, 16)
ASPECT_BUCKETS = {"9:16": 9 / 16, "3:4": 3 / 4, "1:1": 1.0, "4:3": 4 / 3, "16:9": 16 / 9, "21:9": 21 / 9}


def aspect_bucket(width: int, height: int) -> str:
    """The named aspect ratio closest (in log ratio) to width / height."""
    ratio = math.log(width / height)
    return min(ASPECT_BUCKETS, key=lambda name: abs(math.log(ASPECT_BUCKETS[name]) - ratio))


def frame_fps_pairs(num_frames: int, fps: float) -> list[dict[str, int]]:
    """Pairs (frames, sample_fps) whose frames fit in the clip without inventing any:
    the sampling rate is at most the source's, and the span fits in its frames."""
    pairs = []
    for sample_fps in SAMPLE_FPS:
        if sample_fps > fps + 1e-6:
            continue
        step = fps / sample_fps
        for frames in FRAME_COUNTS:
            if (frames - 1) * step + 1 <= num_frames + 1e-6:
                pairs.append({"frames": frames, "fps": sample_fps})
    return pairs
