"""The media pass: one more decode, at storage resolution, encoding every clip to H.264.

Clips are sorted and disjoint, so one encoder, with its few frames of lookahead, is open
at a time, and each clip's mp4 bytes are finished as soon as its last frame passes: memory
never holds a clip's or the video's decoded frames. The finished clips' mp4 bytes
(compressed, at storage size) stay until the file's rows are handed on together. Frames
are placed by timestamp, as in the analysis pass, so both passes agree on frame indices
even where packets were damaged.
"""

from __future__ import annotations

import ctypes
import io
from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter

from curation.probe import SCALER_THREADS, VideoInfo, open_media
from pipeline.config.schema import MediaConfig


try:  # glibc only; elsewhere freed memory stays with the process
    _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _MALLOC_TRIM = None


def _release_freed_memory() -> None:
    """Hand the memory freed by a closed clip encoder back to the system.

    glibc keeps the heap pages an x264 encoder frees on close, and the next clip's encoder
    does not reuse all of them: a worker grew by ~3 MB per 10 s 720p clip (195 to 290 MB
    over a 300 s video), and stays at 190-200 MB with a trim after each clip.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def storage_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The source size scaled down (never up) to fit the refiner's frame, even for yuv420p."""
    scale = min(1.0, max_width / width, max_height / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class _ClipEncoder:
    def __init__(self, width: int, height: int, fps: float, cfg: MediaConfig, scaler: VideoReformatter) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format="mp4")
        rate = Fraction(fps).limit_denominator(100000)
        self.stream = self.container.add_stream("libx264", rate=rate)
        # Frames carry the source's time base; without their own, pts 0, 1, 2... would be read
        # in it and every packet would land at t = 0, which decord's seeking (training reads
        # windows by seeking) turns into wrong frames.
        self.time_base = 1 / rate
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"crf": str(cfg.crf), "preset": cfg.preset}
        self.scaler = scaler  # shared by the video's clips: frame.reformat() builds one per frame
        self.count = 0

    def add(self, frame: av.VideoFrame) -> None:
        out = self.scaler.reformat(frame, width=self.stream.width, height=self.stream.height, format="yuv420p",
                                  threads=SCALER_THREADS)
        out.pts, out.time_base = self.count, self.time_base
        self.count += 1
        self.container.mux(self.stream.encode(out))

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()


def encode_clips(
    uri: str, info: VideoInfo, ranges: list[tuple[int, int]], size: tuple[int, int], cfg: MediaConfig
) -> list[bytes]:
    """H.264 mp4 bytes for each ``[start, end)`` frame range, at ``size``."""
    ranges = sorted(ranges)
    outputs: list[bytes] = []
    encoder: _ClipEncoder | None = None
    scaler = VideoReformatter()

    def close() -> None:
        nonlocal encoder
        if encoder is None:
            raise RuntimeError(f"no frame of clip {ranges[len(outputs)]} could be decoded")
        outputs.append(encoder.finish())
        encoder = None
        _release_freed_memory()

    with open_media(uri) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in frames:
                if frame.pts is None or len(outputs) == len(ranges):
                    continue
                index = info.frame_index(frame.pts)
                while len(outputs) < len(ranges) and index >= ranges[len(outputs)][1]:
                    close()
                if len(outputs) == len(ranges) or index < ranges[len(outputs)][0]:
                    continue
                if encoder is None:
                    encoder = _ClipEncoder(*size, info.fps, cfg, scaler)
                encoder.add(frame)
            if len(outputs) == len(ranges):
                break
    while len(outputs) < len(ranges):
        close()
    return outputs
