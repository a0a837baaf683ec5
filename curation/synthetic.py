"""Real encoded test media with known ground truth: multi-shot videos, broken files, images.

Tests, benchmarks and the demo need videos whose cut positions, static and moving shots and
subject sizes are known exactly. Everything is drawn with numpy and encoded with PyAV's
libx264, one frame at a time, so a five-minute 720p video costs no more memory than a frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal

import av
import numpy as np
from PIL import Image

_MS = Fraction(1, 1000)
ShotKind = Literal["static", "pan", "moving_shape", "texture"]


@dataclass(frozen=True)
class ShotSpec:
    kind: ShotKind
    frames: int
    transition: Literal["cut", "dissolve"] = "cut"  # how this shot begins
    dissolve_frames: int = 12
    seed: int = 0


@dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    fps: int
    width: int
    height: int
    num_frames: int
    cuts: list[int]  # first frame of each shot that begins with a hard cut
    dissolves: list[tuple[int, int]]  # [start, end) of each cross-fade
    shots: list[tuple[str, int, int]]  # (kind, start, end) per shot


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Value noise in 0..1: random values on a coarse grid, upsampled bilinearly."""
    coarse = rng.random((height // cell + 2, width // cell + 2, 3))
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _palette(seed: int) -> tuple[np.ndarray, float]:
    """A distinct tint and brightness per seed, so neighbouring shots differ clearly."""
    rng = np.random.default_rng(seed + 1000)
    return rng.uniform(0.2, 1.0, size=3).astype(np.float32), float(rng.uniform(0.35, 0.85))


def _shot_frames(spec: ShotSpec, height: int, width: int) -> Iterator[np.ndarray]:
    """RGB uint8 frames of one shot, generated lazily."""
    rng = np.random.default_rng(spec.seed)
    tint, brightness = _palette(spec.seed)
    if spec.kind == "pan":
        canvas = _smooth_noise(rng, height, width * 3, cell=max(8, width // 10)) * tint * brightness * 1.6
        speed = max(1, int(0.01 * width))  # a steady pan: a third of the frame per second at 24 fps
        for i in range(spec.frames):
            x = (i * speed) % (2 * width)
            yield np.clip(canvas[:, x : x + width] * 255, 0, 255).astype(np.uint8)
        return
    base = _smooth_noise(rng, height, width, cell=24) * 0.5 + 0.25
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = (xx / width)[..., None] * 0.3
    background = np.clip((base + gradient) * tint * brightness * 1.4, 0, 1)
    shapes = background.copy()
    for _ in range(3):  # a few fixed shapes so even static shots have structure
        cy, cx, r = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, rng.uniform(0.05, 0.12) * height
        shapes[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
    colour = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    for i in range(spec.frames):
        if spec.kind == "static":
            frame = shapes
        elif spec.kind == "moving_shape":
            frame = background.copy()
            cx = (0.1 + 0.8 * i / max(1, spec.frames - 1)) * width
            cy = height * (0.5 + 0.2 * math.sin(i / 6))
            frame[(np.abs(xx - cx) < 0.1 * width) & (np.abs(yy - cy) < 0.15 * height)] = colour
        else:  # texture: the pattern rotates slowly about the centre
            angle = i * 0.02
            u = (xx - width / 2) * math.cos(angle) - (yy - height / 2) * math.sin(angle)
            v = (xx - width / 2) * math.sin(angle) + (yy - height / 2) * math.cos(angle)
            stripes = 0.5 + 0.5 * np.sin(u / 7.0) * np.cos(v / 11.0)
            frame = np.clip(background * (0.6 + 0.6 * stripes[..., None]), 0, 1)
        yield (frame * 255).astype(np.uint8)


def _open_writer(path: Path, fps: int, size: tuple[int, int], crf: int, codec: str = "h264"):
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    return container, stream


def _encode(path: Path, frames: Iterator[np.ndarray], fps: int, size: tuple[int, int], crf: int, codec: str) -> int:
    container, stream = _open_writer(path, fps, size, crf, codec)
    count = 0
    with container:
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            count += 1
        container.mux(stream.encode(None))
    return count


def write_video(
    path: Path, shots: list[ShotSpec], fps: int = 24, size: tuple[int, int] = (320, 180),
    codec: str = "h264", crf: int = 23,
) -> SyntheticVideo:
    """Encode ``shots`` back to back; a dissolve cross-fades from the previous shot's last
    frame over the new shot's first ``dissolve_frames`` frames."""
    width, height = size
    cuts, dissolves, spans = [], [], []

    def frames() -> Iterator[np.ndarray]:
        start, last = 0, None
        for n, spec in enumerate(shots):
            if n and spec.transition == "cut":
                cuts.append(start)
            if n and spec.transition == "dissolve":
                dissolves.append((start, start + spec.dissolve_frames))
            spans.append((spec.kind, start, start + spec.frames))
            for i, frame in enumerate(_shot_frames(spec, height, width)):
                if n and spec.transition == "dissolve" and i < spec.dissolve_frames and last is not None:
                    alpha = (i + 1) / (spec.dissolve_frames + 1)
                    frame = (alpha * frame + (1 - alpha) * last).astype(np.uint8)
                else:
                    last_of_shot = frame
                yield frame
            last = last_of_shot
            start += spec.frames

    count = _encode(Path(path), frames(), fps, size, crf, codec)
    return SyntheticVideo(Path(path), fps, width, height, count, cuts, dissolves, spans)


def write_long_video(path: Path, seconds: float, size: tuple[int, int] = (1280, 720), fps: int = 24) -> SyntheticVideo:
    """One long pan, streamed: for memory and throughput figures on long inputs."""
    return write_video(path, [ShotSpec("pan", int(seconds * fps), seed=7)], fps=fps, size=size)


def write_subject_frame(height: int, width: int, share: float, seed: int = 0) -> np.ndarray:
    """A smooth, low-contrast background with one saturated disc covering ``share`` of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(rng.uniform(90, 140, 3), dtype=np.float32)
    frame = base + 15 * (xx / width)[..., None] + 10 * (yy / height)[..., None]
    radius = math.sqrt(share * height * width / math.pi)
    frame[(yy - height / 2 + 0.5) ** 2 + (xx - width / 2 + 0.5) ** 2 < radius**2] = rng.choice(
        [[230, 30, 40], [30, 200, 60], [40, 60, 230]]
    )
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_broken_files(folder: Path) -> dict[str, Path]:
    """One file per kind of bad input curation must turn into a reject."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / fname for name, fname in [
        ("zero_byte", "zero_byte.mp4"), ("truncated", "truncated.mp4"), ("text", "not_a_video.mp4"),
        ("audio_only", "audio_only.mp4"), ("one_frame", "one_frame.mp4"), ("tiny", "tiny_8x8.mp4"),
        ("vfr", "vfr.mp4"), ("corrupt_middle", "corrupt_middle.mp4"),
    ]}
    files["zero_byte"].write_bytes(b"")
    files["text"].write_text("this is a text file wearing an .mp4 extension\n")
    write_video(files["truncated"], [ShotSpec("pan", 48, seed=11)])
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: int(len(data) * 0.4)])
    write_video(files["one_frame"], [ShotSpec("static", 1, seed=12)])
    write_video(files["tiny"], [ShotSpec("moving_shape", 24, seed=13)], size=(8, 8))
    _write_audio_only(files["audio_only"])
    _write_vfr(files["vfr"])
    write_video(files["corrupt_middle"], [ShotSpec("pan", 36, seed=14), ShotSpec("texture", 36, seed=15)])
    data = bytearray(files["corrupt_middle"].read_bytes())
    mdat = data.find(b"mdat")
    middle = mdat + (len(data) - mdat) // 2
    data[middle : middle + 4000] = np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    files["corrupt_middle"].write_bytes(bytes(data))
    return files


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        t = np.arange(44100, dtype=np.float32) / 44100
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _write_vfr(path: Path) -> None:
    """Frames at irregular times (20, 60, 33 ms apart), as phones record."""
    container, stream = _open_writer(path, 30, (160, 96), 23)
    stream.codec_context.time_base = _MS
    with container:
        pts = 0
        for i, rgb in enumerate(_shot_frames(ShotSpec("moving_shape", 36, seed=16), 96, 160)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts
            frame.time_base = _MS
            container.mux(stream.encode(frame))
            pts += (20, 60, 33)[i % 3]
        container.mux(stream.encode(None))


def write_image_manifest(
    folder: Path, count: int = 6, fmt: Literal["csv", "jsonl", "parquet"] = "csv",
    bad_rows: int = 2, size: tuple[int, int] = (320, 180),
) -> Path:
    """``count`` distinct images and a manifest with ``path`` and ``caption`` columns, plus
    ``bad_rows`` unusable rows (a missing file, a text file named .jpg)."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    width, height = size
    rows = []
    for i in range(count):
        if i % 2:
            rgb = write_subject_frame(height, width, share=0.1 + 0.05 * i, seed=i)
        else:
            rgb = next(_shot_frames(ShotSpec(("static", "texture", "pan")[i % 3], 1, seed=100 + i), height, width))
        path = images / f"image_{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rgb).save(path)
        rows.append({"path": str(path), "caption": f"synthetic image number {i}"})
    bad = [{"path": str(images / "missing.jpg"), "caption": "a file that does not exist"}]
    fake = images / "not_an_image.jpg"
    fake.write_text("not an image")
    bad.append({"path": str(fake), "caption": "a text file named .jpg"})
    rows += bad[:bad_rows]
    manifest = folder / f"manifest.{fmt}"
    if fmt == "csv":
        import csv

        with open(manifest, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


def write_sample_corpus(folder: Path, videos: int = 3, seed: int = 0, size: tuple[int, int] = (320, 180)) -> dict:
    """A small corpus like a user's dump: multi-shot videos with captions (cuts, a dissolve,
    static shots), broken files, and an image-text manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds: list[ShotKind] = ["static", "pan", "moving_shape", "texture"]
    written = []
    for v in range(videos):
        shots = []
        for s in range(int(rng.integers(3, 6))):
            kind = kinds[(v + s) % 4] if s else "static" if v == 0 else kinds[int(rng.integers(0, 4))]
            dissolve = s == 2 and v % 2 == 0
            shots.append(ShotSpec(kind, int(rng.integers(36, 73)), "dissolve" if dissolve else "cut",
                                  dissolve_frames=12, seed=seed * 100 + v * 10 + s))
        video = write_video(folder / f"video_{v:02d}.mp4", shots, size=size)
        (folder / f"video_{v:02d}.txt").write_text(f"synthetic video {v}: {', '.join(s.kind for s in shots)}\n")
        written.append(video)
    broken = write_broken_files(folder / "broken")
    manifest = write_image_manifest(folder, count=6, fmt="csv", bad_rows=2)
    return {"videos": written, "broken": broken, "manifest": manifest}

