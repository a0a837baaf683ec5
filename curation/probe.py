"""Probe a video with PyAV before anything decodes it.

PyAV raises clean exceptions on files that would make other decoders abort or hang, and
demuxing (no decoding) is cheap, so the probe reads every packet's timestamp: the exact frame
count, the true frame rate, and whether the frame rate is variable all come from that. The
caps (``curation.probe.max_pixels``, ``max_frames``, ``max_seconds``) are checked on the
header and while demuxing, so a huge input is a reject before a frame is decoded, and the
probe holds at most ``max_frames`` timestamps, 8 bytes each.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from curation.sources import resolve
from pipeline.config.schema import ProbeConfig

# libswscale's threads for every scaler that reads our decoded frames. PyAV's default (0)
# picks a count from the cores, and the hand-offs between them cost more than a small
# frame's scaling: 448x256 to 128x73 took 0.49 ms of CPU a frame that way and 0.06 ms on
# one thread; 720p to 256x144, 0.50 against 0.46 ms (identical pixels, 2026-12-02). A
# worker per core is the job's parallelism, as with OpenCV's threads.
SCALER_THREADS = 1


class Rejected(Exception):
    """An input that cannot be used: ``stage`` says where it failed, ``reason`` why."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    codec: str
    first_pts: int
    frame_ticks: float  # median pts step between frames, in time_base units

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def frame_index(self, pts: int) -> int:
        """A decoded frame's index, from its timestamp (robust to frames lost to damage)."""
        return int(round((pts - self.first_pts) / self.frame_ticks))


def open_media(uri: str) -> Any:
    """An input container for PyAV: a local path as is, other URIs through pyarrow.fs."""
    fs, path = resolve(uri)
    if fs.type_name == "local":
        return av.open(path)
    return av.open(fs.open_input_file(path))


def probe_video(uri: str, cfg: ProbeConfig) -> VideoInfo:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.size is None:
        raise Rejected("probe", "no such file")
    if info.size == 0:
        raise Rejected("probe", "empty file (0 bytes)")
    try:  # an OSError that is no FFmpegError is the filesystem layer's: left for a retry
        container = open_media(uri)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise Rejected("probe", f"not a readable video container ({type(err).__name__}: {err})") from err
    with container:
        if not container.streams.video:
            what = "audio only" if container.streams.audio else "no media streams"
            raise Rejected("probe", f"no video stream ({what})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        check_frame_size(width, height, cfg)
        time_base = float(stream.time_base or Fraction(1, 1))
        _check_declared_length(container, stream, time_base, cfg)
        try:
            pts = _timestamps(container, stream, time_base, cfg)
        except av.error.FFmpegError as err:
            raise Rejected("probe", f"cannot demux ({type(err).__name__}: {err})") from err
        codec = stream.codec_context.name
    if len(pts) < cfg.min_frames:
        raise Rejected("probe", f"only {len(pts)} frame(s); at least {cfg.min_frames} are needed")
    steps = np.diff(np.sort(pts.astype(np.float64)))
    median = float(np.median(steps))
    if median <= 0:
        raise Rejected("probe", "frame timestamps do not increase")
    low, high = np.percentile(steps, [10, 90])
    if (high - low) / median > cfg.max_interval_spread:
        raise Rejected(
            "probe",
            f"variable frame rate: frame intervals range from {low * time_base * 1000:.1f} "
            f"to {high * time_base * 1000:.1f} ms",
        )
    fps = 1.0 / (median * time_base)
    return VideoInfo(width, height, fps, len(pts), codec, int(pts.min()), median)


def check_frame_size(width: int, height: int, cfg: ProbeConfig, stage: str = "probe") -> None:
    """Reject a frame size outside the side limits or over the pixel cap; read from the
    header, so nothing is decoded first (videos and images alike)."""
    if not (cfg.min_side <= min(width, height) and max(width, height) <= cfg.max_side):
        raise Rejected(stage, f"frame size {width}x{height} is outside {cfg.min_side}..{cfg.max_side} pixels per side")
    if width * height > cfg.max_pixels:
        raise Rejected(stage, f"frame size {width}x{height} is over curation.probe.max_pixels={cfg.max_pixels}")


def _check_declared_length(container: Any, stream: Any, time_base: float, cfg: ProbeConfig) -> None:
    """Reject a header that declares more frames or seconds than the caps, before a packet
    is read (a header that says nothing is checked while demuxing)."""
    seconds = stream.duration * time_base if stream.duration else (container.duration or 0) / av.time_base
    _cap(stream.frames, cfg.max_frames, f"the header's frame count ({stream.frames})", "max_frames")
    _cap(seconds, cfg.max_seconds, f"the header's duration ({seconds:.0f} s)", "max_seconds")


def _timestamps(container: Any, stream: Any, time_base: float, cfg: ProbeConfig) -> np.ndarray:
    """Every frame's timestamp, demuxed (no decoding), in an int64 array; a reject as soon
    as they pass ``max_frames`` or span more than ``max_seconds``."""
    pts, first = array("q"), None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        pts.append(packet.pts)
        first = packet.pts if first is None else min(first, packet.pts)
        _cap(len(pts), cfg.max_frames, "its frame count", "max_frames")
        _cap((packet.pts - first) * time_base, cfg.max_seconds, "its timestamps' span", "max_seconds")
    return np.frombuffer(pts, dtype=np.int64)


def _cap(value: float, cap: float, what: str, key: str) -> None:
    """A probe reject when ``value`` passes ``cap``, naming the key that sets it."""
    if value > cap:
        raise Rejected("probe", f"{what} is over curation.probe.{key}={cap}")
