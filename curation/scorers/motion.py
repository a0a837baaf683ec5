"""Motion scores in fractions of the frame diagonal moved per second.

Dividing by the diagonal makes a score independent of resolution, and dividing by the time
between the two frames makes it independent of the sampling rate, so one threshold holds
across corpora. Two methods: dense Farneback optical flow on small grey frames (measured by
``pipeline.flow``, which evaluation shares), and the motion vectors the codec already stored
(almost free, they come with the decode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np

from pipeline.flow import FARNEBACK_REACH_PX, flow_field


@dataclass(frozen=True)
class MotionReading:
    """One sample's motion: its score, and the flow field it came from (which the camera
    model reads, ``curation.scorers.camera``)."""

    speed: float  # mean flow length, per frame diagonal per second
    field: np.ndarray  # (h, w, 2) flow in work-width pixels
    seconds: float  # the time the field spans


def read_motion(earlier: np.ndarray, rgb: np.ndarray, seconds: float, work_width: int = 160) -> MotionReading:
    """The flow from ``earlier`` to ``rgb``, ``seconds`` apart, as a reading."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    field = flow_field(earlier, rgb, work_width)
    diagonal = math.hypot(*field.shape[:2])
    return MotionReading(float(np.hypot(field[..., 0], field[..., 1]).mean()) / diagonal / seconds, field, seconds)


def sample_motion(before: np.ndarray, rgb: np.ndarray, fps: float,
                  earlier: Optional[tuple[np.ndarray, int]] = None, work_width: int = 160) -> MotionReading:
    """Motion at a sampled frame ``rgb``, per frame diagonal and per second.

    First measured against ``before``, the frame just before it: one frame apart, Farneback
    follows fast pans that it loses across a longer gap. But a one-frame gap multiplies
    noise by the frame rate (sensor or codec noise of 2 grey levels reads as 0.002 per second
    from neighbours, 0.0002 across half a second), so where the neighbours show motion slow
    enough to stay within ``FARNEBACK_REACH_PX`` over the gap to ``earlier`` (an earlier
    frame and how many frames before ``rgb`` it lies, such as the previous sample), the
    motion is measured across that gap instead.
    """
    neighbours = read_motion(before, rgb, 1 / fps, work_width)
    if earlier is not None:
        lengths = np.hypot(neighbours.field[..., 0], neighbours.field[..., 1])
        if float(np.percentile(lengths, 95)) * earlier[1] <= FARNEBACK_REACH_PX:
            return read_motion(earlier[0], rgb, earlier[1] / fps, work_width)
    return neighbours


class ReferenceOrder:
    """How far, in display order, each frame's motion vectors reach.

    A codec's vector points to the block's match in a reference frame, which need not be the
    previous one: after B-frames a P-frame's reference is several frames back, and the
    vectors span that whole distance (measured on a 3 px/frame pan from x264 ``veryfast``:
    12 px on P-frames four frames after their anchor, 6 px on B-frames two frames from
    theirs). The exported vectors only say which side their reference lies on
    (``source`` < 0: past, > 0: future), not which frame it is. But a frame can only refer
    to frames decoded before it, and encoders refer to the nearest of those on each side
    (x264 sorts its reference lists by distance, and with B-pyramids a B-frame refers to the
    nearer reference B-frame, not to the anchor). So the reference distance is the display-
    order gap to the nearest frame, on that side, whose packet reached the decoder first:
    this class records the order in which packets are sent and answers that gap.
    """

    def __init__(self, frame_ticks: float, window: int = 64) -> None:
        self._ticks = frame_ticks  # pts units per frame
        self._window = window  # packets remembered: far more than any reorder depth
        self._rank: dict[int, int] = {}  # pts -> position in decode order
        self._sent = 0

    def sent(self, pts: int) -> None:
        """Record that the packet of the frame stamped ``pts`` went to the decoder."""
        self._rank[pts] = self._sent
        self._sent += 1
        if len(self._rank) > self._window:
            del self._rank[next(iter(self._rank))]  # the earliest sent

    def distances(self, pts: int) -> tuple[int, int]:
        """Frames from ``pts`` to its past and its future reference; 1 for a side without one."""
        rank = self._rank.get(pts, -1)
        earlier = [p for p, r in self._rank.items() if r < rank]
        past = max((p for p in earlier if p < pts), default=pts - self._ticks)
        future = min((p for p in earlier if p > pts), default=pts + self._ticks)
        return max(1, round((pts - past) / self._ticks)), max(1, round((future - pts) / self._ticks))


def motion_vector_magnitude(frame: av.VideoFrame, past: int, future: int) -> float | None:
    """Mean codec motion-vector length of one decoded frame per frame of display time, per
    frame diagonal.

    ``past`` and ``future`` are the display-order distances to the frame's references (see
    ``ReferenceOrder``): each vector is divided by the distance on its side, so a vector
    spanning four frames counts as a quarter of its length per frame, and the result agrees
    in scale with ``flow_magnitude``. This is a per-frame displacement, not a speed: the
    caller multiplies by the fps. Each vector is weighted by its block's area so that a few
    small blocks cannot outvote the frame. The frame must come from a stream opened with
    ``flags2=+export_mvs`` (see ``motion_vector_score``). None when the frame carries no
    vectors: intra frames, codecs that do not export them (checked with PyAV 18.1: H.264,
    MPEG-2 and MPEG-4 part 2 do; HEVC, VP9 and AV1 do not), or a stream opened without the
    flag.
    """
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None:
        return None
    mv = side.to_ndarray()
    if mv.size == 0:
        return None
    dx, dy = mv["motion_x"].astype(np.float32), mv["motion_y"].astype(np.float32)
    scale = np.maximum(mv["motion_scale"], 1) * np.where(mv["source"] < 0, np.float32(past), np.float32(future))
    area = mv["w"].astype(np.float32) * mv["h"]
    length = np.sqrt(dx * dx + dy * dy) / scale
    return float(length @ area / area.sum()) / math.hypot(frame.width, frame.height)


def motion_vector_score(path: str, start_frame: int = 0, end_frame: int | None = None) -> float:
    """Mean per-frame motion-vector magnitude over frames ``[start_frame, end_frame)``, times fps.

    Frames count from 0 in display order. NaN when no frame in the range carries vectors
    (an all-intra stream, or a codec without vector export). Same unit and scale as
    ``flow_magnitude``: fraction of the diagonal per second.

    Motion-vector export is enabled with the decoder option ``flags2=+export_mvs`` (PyAV 18:
    ``codec_context.options``, or ``codec_context.flags2 |= Flags2.export_mvs``). Frame
    threading is left off on purpose: with it, the H.264 decoder (FFmpeg 8.1 in PyAV 18.1)
    sometimes hands out a frame with a missing or altered vector table (measured here: 52
    of 1410 frames, 30 decodes of a 48-frame x264 clip).
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.options = {"flags2": "+export_mvs"}
        rate: Fraction | None = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"{path}: the video stream has no frame rate")
        values = []
        frames = frames_with_reference_distances(container, stream, 1 / float(rate * stream.time_base))
        for index, (frame, distances) in enumerate(frames):
            if end_frame is not None and index >= end_frame:
                break
            if index >= start_frame and (value := motion_vector_magnitude(frame, *distances)) is not None:
                values.append(value)
    return float(np.mean(values)) * float(rate) if values else float("nan")


def frames_with_reference_distances(container: av.container.InputContainer, stream: av.VideoStream,
                                    frame_ticks: float) -> Iterator[tuple[av.VideoFrame, tuple[int, int]]]:
    """Frames of ``stream`` in display order, each with the display-order distances (past,
    future) to its references that ``motion_vector_magnitude`` divides by. ``frame_ticks``
    is the frame duration in the stream's time base."""
    refs = ReferenceOrder(frame_ticks)
    for packet in container.demux(stream):
        if packet.pts is not None:
            refs.sent(packet.pts)
        for frame in packet.decode():
            yield frame, refs.distances(frame.pts)
