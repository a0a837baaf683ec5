"""The analysis pass: one streaming decode at low resolution for shots, motion and subject.

Every frame is decoded once and downscaled once; PySceneDetect reads those small frames,
and so do the scorers (at ``sample_fps``). The codec's motion vectors are read off the same
decode. The pass yields segments (shots, or windows of long shots) as soon as no later cut
can still land inside them, and forgets their frames, so memory is bounded by the longest
window, not by the video's length.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np
from PIL import Image
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from curation.probe import Rejected, VideoInfo, open_media
from curation.scorers.motion import flow_magnitude, motion_vector_magnitude
from curation.scorers.subject import subject_share
from pipeline.config.schema import CurationConfig

MAX_DECODE_ERRORS = 50


@dataclass
class Sample:
    """Scores of one sampled analysis frame."""

    index: int
    flow: Optional[float]  # vs the previous sample, per second; None for the first
    prev_index: Optional[int]
    subject: float
    jpeg: bytes


@dataclass
class Segment:
    """A run of frames between two boundaries: cuts, window ends, or the video's ends."""

    start: int
    end: int  # exclusive
    starts_at_cut: bool
    ends_at_cut: bool
    samples: list[Sample] = field(default_factory=list)
    motion_vectors: list[float] = field(default_factory=list)  # per frame that has them
    damaged: bool = False  # a frame inside was lost to a decode error


def make_detector(cfg: CurationConfig, fps: float):
    min_len = max(1, int(round(0.25 * fps)))
    if cfg.shots.detector == "content":
        return ContentDetector(threshold=cfg.shots.threshold, min_scene_len=min_len)
    return AdaptiveDetector(
        adaptive_threshold=cfg.shots.adaptive_threshold,
        min_content_val=cfg.shots.min_content_val,
        min_scene_len=min_len,
    )


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    scale = min(1.0, target_width / width)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def iter_segments(uri: str, info: VideoInfo, cfg: CurationConfig) -> Iterator[Segment]:
    """Decode ``uri`` once and yield its segments in order."""
    fps_frac = Fraction(info.fps).limit_denominator(100000)
    detector = make_detector(cfg, info.fps)
    lag = detector.event_buffer_length + 2
    max_frames = max(1, int(cfg.split.max_seconds * info.fps))
    sample_every = max(1, int(round(info.fps / cfg.scoring.sample_fps)))
    width, height = analysis_size(info.width, info.height, cfg.shots.analysis_width)

    cuts: list[int] = []
    pending: deque[Sample] = deque()
    mvs: deque[tuple[int, float]] = deque()
    damaged: set[int] = set()
    seg_start, seg_at_cut = 0, False
    prev: Optional[tuple[int, np.ndarray]] = None
    last_index, errors = -1, 0

    def emit(end: int, at_cut: bool) -> Segment:
        nonlocal seg_start, seg_at_cut
        segment = Segment(seg_start, end, seg_at_cut, at_cut)
        while pending and pending[0].index < end:
            segment.samples.append(pending.popleft())
        while mvs and mvs[0][0] < end:
            segment.motion_vectors.append(mvs.popleft()[1])
        segment.damaged = any(seg_start <= d < end for d in damaged)
        seg_start, seg_at_cut = end, at_cut
        return segment

    def ready(safe: int) -> Iterator[Segment]:
        """Segments that end at or before ``safe``, where every cut is already known."""
        while True:
            next_cut = next((c for c in cuts if c > seg_start), None)
            if next_cut is not None and next_cut <= safe and next_cut - seg_start <= max_frames:
                yield emit(next_cut, True)
            elif seg_start + max_frames <= safe:
                yield emit(seg_start + max_frames, False)
            else:
                return

    with open_media(uri) as container:
        stream = container.streams.video[0]
        # Slice threads only: with frame threads, exported motion-vector tables come back
        # altered or missing for a few percent of frames, differently on every run.
        stream.thread_type = "SLICE"
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in _decode(container, stream):
            if frame is None:
                errors += 1
                if errors > MAX_DECODE_ERRORS:
                    raise Rejected("decode", f"more than {MAX_DECODE_ERRORS} corrupt packets")
                continue
            if frame.pts is None:
                continue
            index = info.frame_index(frame.pts)
            if index <= last_index:
                continue
            damaged.update(range(last_index + 1, index))
            last_index = index
            small = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
            cuts += [tc.frame_num for tc in detector.process_frame(FrameTimecode(index, fps_frac), small[:, :, ::-1])]
            mv = motion_vector_magnitude(frame)
            if mv is not None:
                mvs.append((index, mv * info.fps))
            if index % sample_every == 0:
                flow = flow_magnitude(prev[1], small, (index - prev[0]) / info.fps) if prev else None
                pending.append(Sample(index, flow, prev[0] if prev else None, subject_share(small), _jpeg(small)))
                prev = (index, small)
            yield from ready(index - lag)
    if last_index < 0:
        raise Rejected("decode", "no frame could be decoded")
    cuts += [tc.frame_num for tc in detector.post_process(FrameTimecode(last_index, fps_frac))]
    yield from ready(last_index + 1)
    if seg_start <= last_index:
        yield emit(last_index + 1, False)


def _decode(container, stream) -> Iterator[Optional[av.VideoFrame]]:
    """Frames of ``stream``; ``None`` for each packet that failed to decode, so one damaged
    packet costs its frames, not the whole video."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            yield None
            continue
        yield from frames


def _jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
