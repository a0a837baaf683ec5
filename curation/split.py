"""From segments to clips: trim the frames next to cuts, drop what is too short or damaged,
and reduce each clip's per-sample scores to one value per score (and its camera class)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from curation.analysis import Segment
from curation.scorers.camera import classify
from curation.scorers.fingerprint import clip_fingerprint
from pipeline.config.schema import CameraConfig, SplitConfig

KEYFRAME_POSITIONS = (0.1, 0.5, 0.9)  # where in a clip the aesthetic scorer looks


@dataclass
class ClipDraft:
    start: int
    end: int  # exclusive
    motion_flow: float
    motion_vectors: float
    subject: float
    keyframes: list[bytes]  # JPEGs at KEYFRAME_POSITIONS
    fingerprint: np.ndarray  # ``clip_fingerprint`` of the keyframes
    camera_motion: Optional[str] = None  # ``camera.classify``; None without a flow inside the clip
    camera_confidence: Optional[float] = None
    text_area: Optional[float] = None  # mean over the samples that read text; None if none did

    @property
    def thumbnail(self) -> bytes:
        return self.keyframes[len(self.keyframes) // 2]


def clip_from_segment(segment: Segment, fps: float, cfg: SplitConfig, camera: CameraConfig) -> Optional[ClipDraft]:
    """The clip a segment yields, or None when it is a dissolve, damaged, or shorter than
    the minimum."""
    start = segment.start + (cfg.trim_frames if segment.starts_at_cut else 0)
    end = segment.end - (cfg.trim_frames if segment.ends_at_cut else 0)
    if segment.transition or segment.damaged or end - start < math.ceil(cfg.min_seconds * fps):
        return None
    samples = [s for s in segment.samples if start <= s.index < end]
    if not samples:
        return None
    inside = [s for s in samples if s.flow is not None and s.prev_index is not None and s.prev_index >= start]
    flows = [s.flow for s in inside]
    keyframe_samples = [min(samples, key=lambda s: abs(s.index - (start + p * (end - start)))) for p in KEYFRAME_POSITIONS]
    camera_class = classify([s.camera for s in inside if s.camera is not None], camera)
    return ClipDraft(
        start=start,
        end=end,
        motion_flow=float(np.mean(flows)) if flows else float("nan"),
        motion_vectors=float(np.mean(segment.motion_vectors)) if segment.motion_vectors else float("nan"),
        subject=float(np.median([s.subject for s in samples])),
        keyframes=[s.jpeg for s in keyframe_samples],
        fingerprint=clip_fingerprint([s.fingerprint for s in keyframe_samples]),
        camera_motion=camera_class[0] if camera_class else None,
        camera_confidence=camera_class[1] if camera_class else None,
        text_area=float(np.mean(texts)) if (texts := [s.text for s in samples if s.text is not None]) else None,
    )
