"""From segments to clips: trim the frames next to cuts, drop what is too short or damaged,
and reduce each clip's per-sample scores to one value per score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from curation.analysis import Segment
from pipeline.config.schema import SplitConfig

KEYFRAME_POSITIONS = (0.1, 0.5, 0.9)  # where in a clip the aesthetic scorer looks


@dataclass
class ClipDraft:
    start: int
    end: int  # exclusive
    motion_flow: float
    motion_vectors: float
    subject: float
    keyframes: list[bytes]  # JPEGs at KEYFRAME_POSITIONS

    @property
    def thumbnail(self) -> bytes:
        return self.keyframes[len(self.keyframes) // 2]


def clip_from_segment(segment: Segment, fps: float, cfg: SplitConfig) -> Optional[ClipDraft]:
    """The clip a segment yields, or None when it is a dissolve, damaged, or shorter than
    the minimum."""
    start = segment.start + (cfg.trim_frames if segment.starts_at_cut else 0)
    end = segment.end - (cfg.trim_frames if segment.ends_at_cut else 0)
    if segment.transition or segment.damaged or end - start < math.ceil(cfg.min_seconds * fps):
        return None
    samples = [s for s in segment.samples if start <= s.index < end]
    if not samples:
        return None
    flows = [s.flow for s in samples if s.flow is not None and s.prev_index is not None and s.prev_index >= start]
    keyframes = [min(samples, key=lambda s: abs(s.index - (start + p * (end - start)))).jpeg for p in KEYFRAME_POSITIONS]
    return ClipDraft(
        start=start,
        end=end,
        motion_flow=float(np.mean(flows)) if flows else float("nan"),
        motion_vectors=float(np.mean(segment.motion_vectors)) if segment.motion_vectors else float("nan"),
        subject=float(np.median([s.subject for s in samples])),
        keyframes=keyframes,
    )
