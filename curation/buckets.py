"""Training buckets: the aspect-ratio class and the (frames, fps) pairs a clip can supply for
the paper's dynamic frames and FPS. The pairs come from the same config values training
samples from (``train.frame_counts`` x ``train.fps_values``), so every shape training can
draw is one curation labels. (Each stage's crop box is ``pipeline.frames.centre_crop_box``,
shared with training and inference.)"""

from __future__ import annotations

import math
from typing import Sequence

ASPECT_BUCKETS = {"9:16": 9 / 16, "3:4": 3 / 4, "1:1": 1.0, "4:3": 4 / 3, "16:9": 16 / 9, "21:9": 21 / 9}


def aspect_bucket(width: int, height: int) -> str:
    """The named aspect ratio closest (in log ratio) to width / height."""
    ratio = math.log(width / height)
    return min(ASPECT_BUCKETS, key=lambda name: abs(math.log(ASPECT_BUCKETS[name]) - ratio))


def frame_fps_pairs(
    num_frames: int, fps: float, frame_counts: Sequence[int], fps_values: Sequence[int]
) -> list[dict[str, int]]:
    """Pairs (frames, sample_fps) whose frames fit in the clip without inventing any:
    the sampling rate is at most the source's, and the span fits in its frames."""
    pairs = []
    for sample_fps in fps_values:
        if sample_fps > fps + 1e-6:
            continue
        step = fps / sample_fps
        for frames in frame_counts:
            if (frames - 1) * step + 1 <= num_frames + 1e-6:
                pairs.append({"frames": frames, "fps": sample_fps})
    return pairs
