"""Motion scores, in fractions of the frame diagonal moved per second.

Dividing by the diagonal makes a score independent of resolution, and dividing by the time
between the two frames makes it independent of the sampling rate, so thresholds carry over
between corpora. Two methods: dense Farneback optical flow on small frames, and the
motion vectors the codec already stored (almost free: they come with the decode).
"""

from __future__ import annotations

import math
from typing import Optional

import av
import cv2
import numpy as np


def _grey(rgb: np.ndarray, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (width, max(1, int(round(h * width / w))))
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA) if size != (w, h) else grey


def flow_magnitude(prev_rgb: np.ndarray, rgb: np.ndarray, dt_seconds: float, work_width: int = 160) -> float:
    """Mean Farneback flow between two frames, per frame diagonal and per second."""
    a, b = _grey(prev_rgb, work_width), _grey(rgb, work_width)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    magnitude = float(np.sqrt((flow**2).sum(axis=-1)).mean())
    return magnitude / math.hypot(*a.shape) / max(dt_seconds, 1e-6)


def motion_vector_magnitude(frame: av.VideoFrame) -> Optional[float]:
    """Mean codec motion-vector length of one frame, per frame diagonal (a per-frame
    displacement; the caller multiplies by fps). None when the frame carries no vectors
    (intra frames, or a stream opened without ``flags2=+export_mvs``)."""
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None:
        return None
    mv = side.to_ndarray()
    if mv.size == 0:
        return None
    scale = np.maximum(mv["motion_scale"].astype(np.float64), 1.0)
    length = np.hypot(mv["motion_x"] / scale, mv["motion_y"] / scale)
    area = mv["w"].astype(np.float64) * mv["h"].astype(np.float64)
    return float((length * area).sum() / area.sum()) / math.hypot(frame.width, frame.height)


def motion_vector_score(path: str, start_frame: int = 0, end_frame: Optional[int] = None) -> float:
    """Mean per-frame motion-vector magnitude over a frame range, per second."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        fps = float(stream.average_rate or 25)
        values = []
        for i, frame in enumerate(container.decode(stream)):
            if end_frame is not None and i >= end_frame:
                break
            if i >= start_frame and (m := motion_vector_magnitude(frame)) is not None:
                values.append(m)
    return float(np.mean(values)) * fps if values else float("nan")
