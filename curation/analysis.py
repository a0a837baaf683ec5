"""The analysis pass: one streaming decode at low resolution for shots, motion, camera
motion, subject, fingerprints and text overlays.

Every frame is decoded once. Shot and dissolve detection read each frame downscaled to half
the analysis width (they compare frames over time, not fine detail, and find the same cuts
there at a quarter of the cost), the shot detector only every ``detection_stride``-th frame
of fast video (see there); the scorers read the frames they sample (``sample_fps``)
at the analysis width, scaled from the same decoded frame, and the text detector every
``text_fps``-th second of them at ``text_width`` (small text is lost at 256 px). The codec's
motion vectors are read off the same decode. The pass yields segments (shots, windows of long shots, and the
blended frames of dissolves) as soon as no later cut or dissolve can still land inside
them, and forgets their frames, so memory is bounded by the longest window, not by the
video's length.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from curation.dissolves import DissolveDetector
from curation.keyframes import encode_jpeg
from curation.probe import SCALER_THREADS, Rejected, VideoInfo, open_media
from curation.scorers.camera import GlobalMotion, fit_global_motion
from curation.scorers.fingerprint import frame_fingerprint
from curation.scorers.motion import MotionReading, ReferenceOrder, motion_vector_magnitude, read_motion, sample_motion
from curation.scorers.subject import subject_share
from curation.scorers.text import TextAreaDetector, build_text_detector
from pipeline.config.schema import CurationConfig

MAX_DECODE_ERRORS = 50


@dataclass
class Sample:
    """Scores of one sampled analysis frame."""

    index: int
    flow: Optional[float]  # per diagonal per second (``sample_motion``); None for the first
    prev_index: Optional[int]  # the earliest frame the flow read
    subject: float
    jpeg: bytes
    fingerprint: np.ndarray  # ``frame_fingerprint``: near-duplicates are found with it
    camera: Optional[GlobalMotion] = None  # the global motion model of the flow, with it
    text: Optional[float] = None  # share of the frame covered by text, on the samples read at text_fps


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
    transition: bool = False  # a dissolve's blended frames: no clip may contain them


def make_detector(cfg: CurationConfig, fps: float):
    min_len = max(1, int(round(0.25 * fps)))
    if cfg.shots.detector == "content":
        return ContentDetector(threshold=cfg.shots.threshold, min_scene_len=min_len)
    return AdaptiveDetector(
        adaptive_threshold=cfg.shots.adaptive_threshold,
        min_content_val=cfg.shots.min_content_val,
        min_scene_len=min_len,
    )


def detection_stride(fps: float, cfg: CurationConfig) -> int:
    """Every how many frames the shot detector reads one: ``curation.shots.detect_fps``
    frames per second, never more than ``split.trim_frames`` apart.

    Reading frames ``n`` apart, it finds a cut at the first frame it reads after it, up to
    ``n - 1`` frames late: the segment before the cut then ends with up to ``n - 1`` frames of
    the next shot, and the ``trim_frames`` dropped there (at least ``n``) take them and one
    more out of its clip. On 448x256 pans the shot detector took about a tenth of the pass,
    and half as many frames took 8% off it (``benchmarks/curation.py``). The dissolve
    detector still reads every frame: read at 12 fps it missed a 24-frame cross-fade between
    two pans that it finds at 24 (``tests/test_dissolves.py``).
    """
    if cfg.shots.detect_fps <= 0:
        return 1
    return max(1, min(cfg.split.trim_frames, int(fps // cfg.shots.detect_fps)))


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    scale = min(1.0, target_width / width)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class _Boundaries:
    """Cuts and dissolves found so far, as the spans no clip may contain: ``(c, c)`` for a
    cut at ``c`` (clips end before it and start at it), ``[start, end)`` for a dissolve's
    blended frames. Spans behind the emitted segments are forgotten."""

    def __init__(self) -> None:
        self._spans: list[tuple[int, int]] = []

    def add_cuts(self, cuts: list[int]) -> None:
        self._spans += [(c, c) for c in cuts]

    def add_dissolves(self, spans: list[tuple[int, int]]) -> None:
        self._spans += spans

    def next(self, position: int) -> Optional[tuple[int, int]]:
        """The first span a segment starting at ``position`` runs into; a dissolve already
        under way at ``position`` is returned from there. Cuts inside a dissolve (a detector
        can fire on a fade) are absorbed by it."""
        self._spans = [(a, b) for a, b in self._spans if b > position]
        dissolves = [(a, b) for a, b in self._spans if a < b]
        spans = [(max(a, position), b) for a, b in self._spans if a < b or not any(x < a < y for x, y in dissolves)]
        return min(spans, key=lambda s: (s[0], -s[1]), default=None)


class _Segmenter:
    """Collects per-frame findings and hands them out as segments, each as soon as every
    boundary that could fall inside it is known."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.boundaries = _Boundaries()
        self.samples: deque[Sample] = deque()
        self.motion_vectors: deque[tuple[int, float]] = deque()
        self.damaged: set[int] = set()
        self.start, self.at_cut = 0, False

    def ready(self, safe: int) -> Iterator[Segment]:
        """Segments that end at or before ``safe``, where every cut and dissolve is known."""
        while True:
            span = self.boundaries.next(self.start)
            if span is not None and span[0] == self.start:  # at a dissolve
                if span[1] > safe:
                    return
                yield self._emit(span[1], True, transition=True)
            elif span is not None and span[0] <= safe and span[0] - self.start <= self.max_frames:
                yield self._emit(span[0], True)
            elif self.start + self.max_frames <= safe:
                yield self._emit(self.start + self.max_frames, False)
            else:
                return

    def finish(self, last_index: int) -> Iterator[Segment]:
        """The remaining segments, once every frame up to ``last_index`` is in."""
        yield from self.ready(last_index + 1)
        if self.start <= last_index:
            yield self._emit(last_index + 1, False)

    def _emit(self, end: int, at_cut: bool, transition: bool = False) -> Segment:
        segment = Segment(self.start, end, self.at_cut, at_cut, transition=transition)
        while self.samples and self.samples[0].index < end:
            segment.samples.append(self.samples.popleft())
        while self.motion_vectors and self.motion_vectors[0][0] < end:
            segment.motion_vectors.append(self.motion_vectors.popleft()[1])
        lost = {d for d in self.damaged if d < end}
        segment.damaged = any(d >= self.start for d in lost)
        self.damaged -= lost
        self.start, self.at_cut = end, at_cut
        return segment


class _Scaler:
    """The two sizes the pass reads a decoded frame at.

    One reformatter per size for the whole video: ``frame.reformat()`` builds a new scaler
    for every frame, which cost more than the scaling itself (2.3 vs 0.95 ms a 720p frame).
    Each scales on one thread (``SCALER_THREADS``, see there).
    """

    def __init__(self, width: int, height: int, text_size: tuple[int, int]) -> None:
        self.width, self.height = width, height
        self.text_size = text_size
        self._detection, self._scoring, self._text = VideoReformatter(), VideoReformatter(), VideoReformatter()

    def detection(self, frame: av.VideoFrame) -> np.ndarray:
        """Half the analysis size, in BGR as PySceneDetect reads it."""
        small = self._detection.reformat(frame, width=self.width // 2, height=self.height // 2, format="bgr24",
                                         interpolation="AREA", threads=SCALER_THREADS)
        return small.to_ndarray()

    def scoring(self, frame: av.VideoFrame) -> np.ndarray:
        """The analysis size, in RGB, for the scorers."""
        return self._scoring.reformat(frame, width=self.width, height=self.height, format="rgb24",
                                      interpolation="AREA", threads=SCALER_THREADS).to_ndarray()

    def text(self, frame: av.VideoFrame) -> np.ndarray:
        """The text detector's size (``curation.scoring.text_width``, never enlarged), in RGB."""
        width, height = self.text_size
        return self._text.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA",
                                   threads=SCALER_THREADS).to_ndarray()


class _Sampler:
    """Flow, camera model, subject, fingerprint and keyframe of each sampled frame. Flow is
    ``sample_motion``'s: against the frame just before the sample (``remember``), or across
    the gap to the previous sample where the motion is slow enough for Farneback to follow it
    that far; the camera model is fitted to that same flow field."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.prev: Optional[tuple[int, np.ndarray]] = None  # the previous sample
        self.before: Optional[tuple[int, np.ndarray]] = None  # the frame before the next sample

    def remember(self, index: int, rgb: np.ndarray) -> None:
        self.before = (index, rgb)

    def sample(self, index: int, rgb: np.ndarray) -> Sample:
        earlier = (self.prev[1], index - self.prev[0]) if self.prev else None
        reading: Optional[MotionReading] = None
        if self.before is not None and self.before[0] == index - 1:
            reading = sample_motion(self.before[1], rgb, self.fps, earlier if earlier and earlier[1] > 1 else None)
        elif earlier is not None:  # the frame before was lost: the gap alone
            reading = read_motion(earlier[0], rgb, earlier[1] / self.fps)
        # The earliest frame the flow may have read: a clip that starts after it drops the flow.
        reference = self.prev[0] if self.prev else (index - 1 if reading is not None else None)
        sample = Sample(index, reading.speed if reading else None, reference, subject_share(rgb), encode_jpeg(rgb),
                        frame_fingerprint(rgb), fit_global_motion(reading.field, reading.seconds) if reading else None)
        self.prev = self.before = (index, rgb)
        return sample


@functools.lru_cache(maxsize=2)
def text_detector(weights: Optional[str], width: int) -> TextAreaDetector:
    """The text detector, built once per process (CRAFT's weights take seconds to load)."""
    return build_text_detector(weights, "cpu", width)


def iter_segments(uri: str, info: VideoInfo, cfg: CurationConfig) -> Iterator[Segment]:
    """Decode ``uri`` once and yield its segments in order."""
    fps_frac = Fraction(info.fps).limit_denominator(100000)
    stride = detection_stride(info.fps, cfg)
    shots = make_detector(cfg, info.fps)
    dissolves = DissolveDetector(info.fps, cfg.split.dissolve_threshold) if cfg.split.dissolves else None
    lag = (shots.event_buffer_length + 2) * stride
    sample_every = max(1, int(round(info.fps / cfg.scoring.sample_fps)))
    # Text is read on every text_every-th sample (None: not read at all).
    text_every = max(1, int(round(cfg.scoring.sample_fps / cfg.scoring.text_fps))) if cfg.scoring.text_fps else None
    detect_text = text_detector(cfg.scoring.text_weights, cfg.scoring.text_width) if text_every else None
    scaler = _Scaler(*analysis_size(info.width, info.height, cfg.shots.analysis_width),
                     analysis_size(info.width, info.height, cfg.scoring.text_width))
    segmenter = _Segmenter(max(1, int(cfg.split.max_seconds * info.fps)))
    sampler = _Sampler(info.fps)
    last_index, next_read = -1, 0
    with open_media(uri) as container:
        for index, frame, distances in _indexed_frames(container, info):
            segmenter.damaged.update(range(last_index + 1, index))
            last_index = index
            small = scaler.detection(frame)
            if index >= next_read:  # a frame the shot detector reads (after a lost frame, the next one)
                next_read = index + stride
                cuts = shots.process_frame(FrameTimecode(index, fps_frac), small)
                segmenter.boundaries.add_cuts([tc.frame_num for tc in cuts])
            safe = index - lag
            if dissolves is not None:
                segmenter.boundaries.add_dissolves(dissolves.process(index, small))
                safe = min(safe, dissolves.settled)
            mv = motion_vector_magnitude(frame, *distances)
            if mv is not None:
                segmenter.motion_vectors.append((index, mv * info.fps))
            if index % sample_every == 0:
                sample = sampler.sample(index, scaler.scoring(frame))
                if detect_text is not None and (index // sample_every) % text_every == 0:
                    sample.text = detect_text(scaler.text(frame))
                segmenter.samples.append(sample)
            elif (index + 1) % sample_every == 0:
                sampler.remember(index, scaler.scoring(frame))
            yield from segmenter.ready(safe)
    if last_index < 0:
        raise Rejected("decode", "no frame could be decoded")
    segmenter.boundaries.add_cuts([tc.frame_num for tc in shots.post_process(FrameTimecode(last_index, fps_frac))])
    if dissolves is not None:
        segmenter.boundaries.add_dissolves(dissolves.finish())
    yield from segmenter.finish(last_index)


def _indexed_frames(container, info: VideoInfo) -> Iterator[tuple[int, av.VideoFrame, tuple[int, int]]]:
    """``(display index, frame, reference distances)`` for each decodable frame, in order,
    once each; the distances (past, future) are for its motion vectors (``ReferenceOrder``).

    One damaged packet costs its frames, not the whole video; past ``MAX_DECODE_ERRORS``
    damaged packets the file is rejected.
    """
    stream = container.streams.video[0]
    # Slice threads only: with frame threads, exported motion-vector tables come back
    # altered or missing for a few percent of frames, differently on every run. No loop
    # filter on frames nothing refers to: decoding costs 10-20% less, and the frames we read
    # at 128-256 px differ by 0.001 grey levels on average (x264 B-frames, measured).
    stream.thread_type = "SLICE"
    stream.codec_context.options = {"flags2": "+export_mvs", "skip_loop_filter": "noref"}
    refs = ReferenceOrder(info.frame_ticks)
    errors, last_index = 0, -1
    for packet in container.demux(stream):
        if packet.pts is not None:
            refs.sent(packet.pts)
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            errors += 1
            if errors > MAX_DECODE_ERRORS:
                raise Rejected("decode", f"more than {MAX_DECODE_ERRORS} corrupt packets") from None
            continue
        for frame in frames:
            index = info.frame_index(frame.pts) if frame.pts is not None else last_index
            if index > last_index:
                last_index = index
                yield index, frame, refs.distances(frame.pts)
