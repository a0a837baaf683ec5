"""Real encoded test media with known ground truth: multi-shot videos, broken files, images.

Curation is judged by classical detectors (PySceneDetect for shots, optical flow for motion,
saliency for the subject) running on real decoded files, so its tests need real files whose
answers are known exactly: where the cuts and dissolves are, which shots are static and which
move, how much of a frame the subject covers, and one file for each way an input can be broken.

Frames are drawn with numpy and PIL and encoded with PyAV's libx264 one at a time: nothing
holds more than a frame or two plus one source texture, so a five-minute 720p video costs
the same memory as a five-second one.
"""

from __future__ import annotations

import colorsys
import csv
import importlib.util
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw

from pipeline.allocator import filled_allocations

ShotKind = Literal["static", "pan", "moving_shape", "texture"]
KINDS: tuple[ShotKind, ...] = ("static", "pan", "moving_shape", "texture")
PAN_SPEED = 0.02  # of the frame width per frame: a strong flow that still stays trackable

Renderer = Callable[[int], np.ndarray]  # frame index within the shot -> RGB uint8 frame


@dataclass(frozen=True)
class ShotSpec:
    """One shot of a synthetic video.

    ``transition`` says how this shot begins (ignored for the first shot); a dissolve's
    frames are part of this shot's ``frames``. ``seed`` picks the palette and texture, so
    shots with different seeds look clearly different across a cut.
    """

    kind: ShotKind
    frames: int
    transition: Literal["cut", "dissolve"] = "cut"
    dissolve_frames: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.frames < 1:
            raise ValueError(f"a shot needs at least one frame, got {self.frames}")
        if self.transition not in ("cut", "dissolve"):
            raise ValueError(f"transition must be 'cut' or 'dissolve', got {self.transition!r}")
        if self.transition == "dissolve" and not 1 <= self.dissolve_frames <= self.frames:
            raise ValueError(f"dissolve_frames must be in 1..{self.frames}, got {self.dissolve_frames}")


@dataclass(frozen=True)
class SyntheticVideo:
    """What was written, and the ground truth a detector should find in it."""

    path: Path
    fps: int
    width: int
    height: int
    num_frames: int
    cuts: list[int]  # first frame of each shot that begins with a hard cut (never 0)
    dissolves: list[tuple[int, int]]  # [start, end) of each cross-fade
    shots: list[tuple[str, int, int]]  # (kind, start, end exclusive) per shot, in order


# ----------------------------------------------------------------------------- drawing


def _palette(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a light colour for a seed, as float RGB in 0..1.

    Hues step by the golden ratio and brightness alternates with the seed's parity, so
    shots with neighbouring seeds differ in hue, saturation and value at once: a cut
    between them is a large HSV change for ContentDetector, not a borderline one.
    """
    hue = (seed * 0.618034 + 0.1) % 1.0
    value = 0.9 if seed % 2 == 0 else 0.55
    light = colorsys.hsv_to_rgb(hue, 0.55, value)
    dark = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, 0.8, value * 0.35)
    return np.array(dark, np.float32), np.array(light, np.float32)


def _periodic_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Smooth noise in 0..1 that tiles seamlessly in both directions.

    White noise low-pass filtered in the Fourier domain is periodic by construction, so a
    pan can wrap around the canvas forever without a seam (a seam would be a false cut).
    ``scale`` is the blob size in pixels; an octave at a quarter of it and a faint 1.5 px
    grain add the fine detail optical flow needs to lock on (and give x264 real work).
    """
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius2 = fy**2 + fx**2
    total = np.zeros((height, width), np.float32)
    for blob, weight in ((scale, 1.0), (scale / 4, 0.35), (1.5, 0.12)):
        spectrum = np.fft.rfft2(rng.standard_normal((height, width)).astype(np.float32))
        spectrum *= np.exp(-radius2 * (blob / 2) ** 2 * 2 * math.pi**2)
        layer = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
        total += weight * layer / (layer.std() + 1e-8)
    low, high = np.percentile(total, [1, 99])
    return np.clip((total - low) / (high - low + 1e-8), 0, 1)


def _colourise(values: np.ndarray, seed: int) -> np.ndarray:
    """Map 0..1 values onto the seed's dark-to-light ramp, as RGB uint8."""
    dark, light = _palette(seed)
    rgb = dark + values[..., None] * (light - dark)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _gradient(height: int, width: int, seed: int, contrast: float) -> np.ndarray:
    """A smooth diagonal ramp in the seed's palette: background with no edges at all."""
    ramp = np.add.outer(np.linspace(0, 0.4, height), np.linspace(0, 0.6, width)).astype(np.float32)
    return _colourise(0.5 + contrast * (ramp - 0.5), seed)


def _shape_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, so shapes stand out from the muted backgrounds."""
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _static(spec: ShotSpec, height: int, width: int) -> Renderer:
    """One fixed image with structure (gradient, texture, shapes), so it is not flat."""
    rng = np.random.default_rng(spec.seed)
    texture = _periodic_noise(rng, height, width, scale=max(4.0, width / 12))
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    image = Image.fromarray(_colourise(0.6 * ramp + 0.4 * texture, spec.seed))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.2, 0.8) * height
        r = rng.uniform(0.06, 0.14) * min(width, height) + 1
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=_shape_colour(rng))
    frame = np.asarray(image)
    return lambda i: frame


def _pan(spec: ShotSpec, height: int, width: int) -> Renderer:
    """A window sliding right across a wide seamless texture at a constant speed."""
    rng = np.random.default_rng(spec.seed)
    period = 2 * width
    canvas = _colourise(_periodic_noise(rng, height, period, scale=max(4.0, width / 8)), spec.seed)
    canvas = np.concatenate([canvas, canvas[:, :width]], axis=1)  # lets any window be one slice
    speed = max(1, round(PAN_SPEED * width))
    return lambda i: np.ascontiguousarray(canvas[:, (i * speed) % period :][:, :width])


def _bounce(t: float, span: float) -> float:
    """Position after travelling ``t`` back and forth along ``span``: shapes never leave."""
    if span <= 0:
        return 0.0
    t %= 2 * span
    return t if t <= span else 2 * span - t


def _moving_shape(spec: ShotSpec, height: int, width: int) -> Renderer:
    """A low-contrast background with a disc and a rectangle bouncing across it."""
    rng = np.random.default_rng(spec.seed)
    background = Image.fromarray(_gradient(height, width, spec.seed, contrast=0.4))
    side = max(2.0, 0.25 * height)
    shapes = [  # (draw method, colour, start x, start y, speed x, speed y); pixels and pixels per frame
        ("ellipse", _shape_colour(rng), rng.uniform(0, width), rng.uniform(0, height), 0.015 * width, 0.01 * height),
        ("rectangle", _shape_colour(rng), rng.uniform(0, width), rng.uniform(0, height), 0.01 * width, 0.02 * height),
    ]

    def render(i: int) -> np.ndarray:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        for method, colour, x0, y0, vx, vy in shapes:
            x, y = _bounce(x0 + i * vx, width - side), _bounce(y0 + i * vy, height - side)
            getattr(draw, method)([x, y, x + side, y + side], fill=colour)
        return np.asarray(image)

    return render


def _texture(spec: ShotSpec, height: int, width: int) -> Renderer:
    """A striped, noisy pattern that slowly rotates and breathes in and out (zoom)."""
    rng = np.random.default_rng(spec.seed)
    size = math.ceil(math.hypot(width, height)) + 2  # covers the frame at any angle
    noise = _periodic_noise(rng, size, size, scale=max(4.0, size / 10))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx + 0.5 * yy) * (2 * math.pi / max(6.0, width / 16)))
    source = Image.fromarray(_colourise(0.65 * noise + 0.35 * stripes, spec.seed))
    centre_in, cx, cy = size / 2, width / 2, height / 2

    def render(i: int) -> np.ndarray:
        angle = math.radians(0.8 * i)
        zoom = 1.15 + 0.1 * math.sin(i / 20)  # >= 1, so the view stays inside the source
        a, b = math.cos(angle) / zoom, -math.sin(angle) / zoom
        c, d = math.sin(angle) / zoom, math.cos(angle) / zoom
        affine = (a, b, centre_in - a * cx - b * cy, c, d, centre_in - c * cx - d * cy)
        return np.asarray(source.transform((width, height), Image.AFFINE, affine, Image.BILINEAR))

    return render


_RENDERERS: dict[str, Callable[[ShotSpec, int, int], Renderer]] = {
    "static": _static, "pan": _pan, "moving_shape": _moving_shape, "texture": _texture,
}


# ---------------------------------------------------------------------------- encoding


def _encoder_options(codec: str, crf: int) -> dict[str, str]:
    """crf and preset for the x264/x265 encoders; other encoders keep their defaults."""
    if codec in ("h264", "libx264", "hevc", "libx265"):
        return {"crf": str(crf), "preset": "veryfast"}
    return {}


def encode_frames(path: Path, frames: Iterable[np.ndarray], fps: int, size: tuple[int, int], codec: str = "h264",
            crf: int = 23, pts_ms: Iterable[int] | None = None) -> int:
    """Encode RGB frames as they arrive; returns how many were written.

    ``pts_ms`` gives each frame's timestamp in milliseconds for variable-rate files;
    otherwise frames are spaced 1/fps apart by the encoder.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {width}x{height}")
    count = 0
    # x264 reads memory it has not written: the allocations are filled while it runs, so a
    # fixed seed gives the same file (pipeline.allocator).
    with filled_allocations(), av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = _encoder_options(codec, crf)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        stamps = iter(pts_ms) if pts_ms is not None else None
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if stamps is not None:
                frame.pts, frame.time_base = next(stamps), Fraction(1, 1000)
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def _timeline(
    shots: list[ShotSpec] | list[CameraShot],
) -> tuple[list[int], list[tuple[int, int]], list[tuple[str, int, int]]]:
    """Cuts, dissolves and shot spans, known before a single frame is drawn."""
    cuts, dissolves, spans, start = [], [], [], 0
    for n, spec in enumerate(shots):
        if n and spec.transition == "cut":
            cuts.append(start)
        elif n:
            dissolves.append((start, start + spec.dissolve_frames))
        spans.append((spec.kind, start, start + spec.frames))
        start += spec.frames
    return cuts, dissolves, spans


def _video_frames(shots: list[ShotSpec], height: int, width: int) -> Iterator[np.ndarray]:
    """Every frame of the video in order, holding at most two shots' renderers."""
    return _blended((_RENDERERS[spec.kind](spec, height, width), spec) for spec in shots)


def _blended(shots: Iterable[tuple[Renderer, ShotSpec | CameraShot]]) -> Iterator[np.ndarray]:
    """The frames of ``(renderer, spec)`` pairs back to back, with their transitions.

    A dissolve keeps the previous shot running past its end (its motion continues under
    the fade, as in a real cross-fade) and blends it out linearly over the new shot's
    first ``dissolve_frames`` frames.
    """
    previous: tuple[Renderer, int] | None = None
    for n, (render, spec) in enumerate(shots):
        fade = spec.dissolve_frames if n and spec.transition == "dissolve" else 0
        for i in range(spec.frames):
            frame = render(i)
            if i < fade and previous is not None:
                old_render, old_frames = previous
                alpha = (i + 1) / (fade + 1)
                frame = (alpha * frame + (1 - alpha) * old_render(old_frames + i) + 0.5).astype(np.uint8)
            yield frame
        previous = (render, spec.frames)


def write_video(path: Path, shots: list[ShotSpec], fps: int = 24, size: tuple[int, int] = (320, 180),
                codec: str = "h264", crf: int = 23) -> SyntheticVideo:
    """Encode ``shots`` back to back into ``path``; returns the file's ground truth.

    ``size`` is (width, height); ``crf`` applies to the x264/x265 encoders (see
    _encoder_options). The same shots always give the same bytes with h264.
    """
    if not shots:
        raise ValueError("a video needs at least one shot")
    width, height = size
    cuts, dissolves, spans = _timeline(shots)
    count = encode_frames(Path(path), _video_frames(shots, height, width), fps, size, codec, crf)
    return SyntheticVideo(Path(path), fps, width, height, count, cuts, dissolves, spans)


def write_long_video(path: Path, seconds: float, size: tuple[int, int] = (1280, 720), fps: int = 24) -> SyntheticVideo:
    """One long pan, streamed frame by frame: for memory and throughput on long inputs."""
    return write_video(path, [ShotSpec("pan", max(1, round(seconds * fps)), seed=7)], fps=fps, size=size)


# --------------------------------------------------------------- camera moves over a picture


@dataclass(frozen=True, eq=False)
class CameraShot:
    """A camera gliding over one still picture: a pan, tilt or zoom across a photograph.

    Slow, smooth camera motion over smooth content changes pixels almost linearly, as a
    cross-fade does, so these shots are the hard negatives of dissolve detection; a shot of
    a black picture that dissolves in or out is a fade from or to black. ``pan`` is (right,
    down) in output pixels per frame, ``zoom`` the relative change of scale per frame (0.01:
    1% closer each frame, negative zooms out), ``roll`` the camera's turn in degrees per
    frame (clockwise: the picture turns the other way), ``shake`` the amplitude in pixels of
    a hand-held tremble (a few sines of 2 to 8 cycles a second at 24 fps, fixed by ``seed``),
    and ``mover`` the speed in pixels per frame of a disc, a quarter of the frame high, that
    crosses the frame in front of the picture (a subject moving while the camera may not).
    ``transition`` and ``dissolve_frames`` mean what they mean on ShotSpec.
    """

    picture: np.ndarray  # RGB uint8, any size: scaled once so that the whole path fits in it
    frames: int
    pan: tuple[float, float] = (0.0, 0.0)
    zoom: float = 0.0
    roll: float = 0.0
    shake: float = 0.0
    mover: float = 0.0
    seed: int = 0
    transition: Literal["cut", "dissolve"] = "cut"
    dissolve_frames: int = 12

    kind = "camera"  # the label of its span in SyntheticVideo.shots

    def __post_init__(self) -> None:
        if self.picture.ndim != 3 or self.picture.shape[2] != 3 or self.picture.dtype != np.uint8:
            raise ValueError(f"picture must be RGB uint8, got {self.picture.dtype} {self.picture.shape}")
        if self.frames < 1:
            raise ValueError(f"a shot needs at least one frame, got {self.frames}")
        if self.transition == "dissolve" and not 1 <= self.dissolve_frames <= self.frames:
            raise ValueError(f"dissolve_frames must be in 1..{self.frames}, got {self.dissolve_frames}")


def _camera(shot: CameraShot, size: tuple[int, int], span: int) -> Renderer:
    """Frames of ``shot`` for indices ``0..span-1`` (a dissolve into the next shot runs the
    camera on past ``shot.frames``), the path centred on the picture.

    Each frame is one bicubic warp of the picture, scaled once so that the widest view of
    the path just fits: the camera never sees past the picture's edge (a mirrored or black
    border would be an edge that no real camera move shows).
    """
    width, height = size
    scales = [(1 + shot.zoom) ** i for i in (0, span - 1)]
    (dx, dy), travel = shot.pan, span - 1
    view_w, view_h = (math.hypot(width, height),) * 2 if shot.roll else (width, height)  # any turn fits
    need_w = view_w / min(scales) + abs(dx) * travel + 2 * shot.shake + 2
    need_h = view_h / min(scales) + abs(dy) * travel + 2 * shot.shake + 2
    rows, cols = shot.picture.shape[:2]
    fit = max(need_w / cols, need_h / rows)
    size_in = (math.ceil(cols * fit), math.ceil(rows * fit))
    picture = cv2.resize(shot.picture, size_in, interpolation=cv2.INTER_AREA if fit < 1 else cv2.INTER_CUBIC)
    centre_x, centre_y = (size_in[0] - 1) / 2 - dx * travel / 2, (size_in[1] - 1) / 2 - dy * travel / 2
    tremble = _tremble(shot.shake, shot.seed)

    def render(i: int) -> np.ndarray:
        inv = (1 + shot.zoom) ** -i  # output pixels to picture pixels
        turn = math.radians(shot.roll * i)
        cos, sin = inv * math.cos(turn), inv * math.sin(turn)
        jitter_x, jitter_y = tremble(i)
        x, y = centre_x + dx * i + jitter_x, centre_y + dy * i + jitter_y
        cx, cy = (width - 1) / 2, (height - 1) / 2
        affine = np.array([[cos, -sin, x - cos * cx + sin * cy], [sin, cos, y - sin * cx - cos * cy]], np.float32)
        frame = cv2.warpAffine(picture, affine, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        if shot.mover:
            radius = max(2, height // 8)
            centre = (int(round((i * shot.mover) % (width + 2 * radius) - radius)), height // 2)
            cv2.circle(frame, centre, radius, (200, 60, 40), thickness=-1, lineType=cv2.LINE_AA)
        return frame

    return render


def _tremble(amplitude: float, seed: int) -> Callable[[int], tuple[float, float]]:
    """A hand-held camera's offset at frame i, in pixels: per axis, three sines of 0.08 to
    0.33 cycles a frame (2 to 8 a second at 24 fps) with random phases, ``amplitude`` at most."""
    rng = np.random.default_rng(seed)
    waves = [(rng.uniform(0.08, 0.33, 3), rng.uniform(0, 2 * math.pi, 3)) for _ in range(2)]

    def offset(i: int) -> tuple[float, float]:
        x, y = (float(np.sum(np.sin(2 * math.pi * cycles * i + phase))) / 3 for cycles, phase in waves)
        return amplitude * x, amplitude * y

    return offset


def write_camera_video(path: Path, shots: list[CameraShot], fps: int = 24, size: tuple[int, int] = (480, 270),
                       crf: int = 23) -> SyntheticVideo:
    """Encode camera ``shots`` back to back as H.264 into ``path``; returns the ground truth."""
    if not shots:
        raise ValueError("a video needs at least one shot")
    runs_on = [nxt.dissolve_frames if nxt.transition == "dissolve" else 0 for nxt in shots[1:]] + [0]
    renderers = ((_camera(shot, size, shot.frames + extra), shot) for shot, extra in zip(shots, runs_on))
    cuts, dissolves, spans = _timeline(shots)
    count = encode_frames(Path(path), _blended(renderers), fps, size, "h264", crf)
    return SyntheticVideo(Path(path), fps, size[0], size[1], count, cuts, dissolves, spans)


def write_copy(source: Path, target: Path, *, crop: float = 0.0, brightness: int = 0, speed: float = 1.0,
               size: tuple[int, int] | None = None, crf: int = 23) -> Path:
    """A near-duplicate of the video at ``source``, as re-uploads make them: decoded and
    encoded again at ``crf``, ``crop`` of the width and height cut from each side and the rest
    scaled back (or to ``size``), ``brightness`` grey levels added, and played ``speed`` times
    as fast (frames dropped or repeated at the same frame rate)."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = int(round(stream.average_rate or 24))
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    height, width = frames[0].shape[:2]
    out_size = size or (width, height)
    dx, dy = round(crop * width), round(crop * height)

    def changed(rgb: np.ndarray) -> np.ndarray:
        cut = np.ascontiguousarray(rgb[dy:height - dy, dx:width - dx])
        scaled = cv2.resize(cut, out_size, interpolation=cv2.INTER_AREA)
        return np.clip(scaled.astype(np.int16) + brightness, 0, 255).astype(np.uint8)

    picks = [min(len(frames) - 1, int(i * speed)) for i in range(int(len(frames) / speed))]
    encode_frames(Path(target), (changed(frames[i]) for i in picks), fps, out_size, "h264", crf)
    return Path(target)


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic stand-in for a photograph, as RGB uint8.

    Natural images have an amplitude spectrum falling as 1/f, soft-edged objects and smooth
    lighting; white or band-limited noise (the shot kinds above) has none of these, and a
    detector tuned on it can fail on photographs. This is luminance noise whose amplitude
    falls as 1/f^1.3 (a smooth photograph; 1/f is a busy one) and smoother colour noise
    (1/f^2), under a lighting ramp, with a few soft-edged ellipses in front.
    """
    rng = np.random.default_rng(seed)
    light = np.add.outer(np.linspace(-0.5, 0.5, height), rng.uniform(-0.5, 0.5) * np.linspace(-1, 1, width))
    luma = 0.45 + 0.12 * _power_law_noise(rng, height, width, 1.3) + 0.2 * light
    colour = np.stack([_power_law_noise(rng, height, width, 2.0) for _ in range(3)], axis=-1)
    background = np.clip(luma[..., None] + 0.06 * colour, 0, 1) * 255
    return _soft_ellipses(background.astype(np.float32), rng, count=5)


def _power_law_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose amplitude spectrum falls as 1/f^``exponent``."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    frequency = np.maximum(np.hypot(fy, fx), 1.0 / max(height, width))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((height, width))) * frequency**-exponent, s=(height, width))
    return (field - field.mean()) / (field.std() + 1e-8)


def _soft_ellipses(canvas: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` muted ellipses over a float RGB ``canvas``, edges blurred as a lens would."""
    height, width = canvas.shape[:2]
    shapes, mask = Image.new("RGB", (width, height)), Image.new("L", (width, height))
    for _ in range(count):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.05, 0.2) * width, rng.uniform(0.05, 0.2) * height
        r, g, b = colorsys.hsv_to_rgb(float(rng.random()), 0.5, float(rng.uniform(0.3, 0.9)))
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        ImageDraw.Draw(shapes).ellipse(box, fill=(int(r * 255), int(g * 255), int(b * 255)))
        ImageDraw.Draw(mask).ellipse(box, fill=255)
    sigma = max(1.0, min(width, height) / 200)
    cover = cv2.GaussianBlur(np.asarray(mask), (0, 0), sigma).astype(np.float32)[..., None] / 255
    colour = cv2.GaussianBlur(np.asarray(shapes), (0, 0), sigma).astype(np.float32)  # already weighted by the cover
    return np.clip(canvas * (1 - cover) + colour + 0.5, 0, 255).astype(np.uint8)


def smooth_gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A picture with no edges at all, as RGB uint8: per channel, a sum of a few very low
    frequency waves (a sky, a studio backdrop). A pan over it changes every pixel almost
    exactly linearly over time, which is the hardest case for telling motion from a fade."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    channels = []
    for _ in range(3):
        waves = [(rng.uniform(0.2, 1.2), angle, rng.uniform(0, 2 * math.pi)) for angle in rng.uniform(0, math.pi, 3)]
        channels.append(0.5 + 0.13 * sum(np.cos(2 * math.pi * cycles * (math.cos(angle) * xx + math.sin(angle) * yy)
                                                + phase) for cycles, angle, phase in waves))
    return (np.clip(np.stack(channels, axis=-1), 0, 1) * 255 + 0.5).astype(np.uint8)


def sample_photographs() -> list[Path]:
    """Real photographs that ship with installed packages (none are downloaded): for tests
    and benchmarks that want real content beside ``photo_like``. May be empty."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return []
    photo = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return [photo] if photo.is_file() else []


# ------------------------------------------------------------------------------ images


def write_subject_frame(height: int, width: int, share: float, seed: int = 0) -> np.ndarray:
    """A smooth low-contrast background with one saturated object covering ``share`` of it.

    The object is the ``round(share * height * width)`` pixels nearest the centre, so its
    area is exact to a pixel: a disc while one fits, else a rectangle of the frame's own
    aspect ratio (which reaches share 1). A saliency scorer should report about ``share``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    frame = _gradient(height, width, seed, contrast=0.15)
    grey = frame.mean(axis=2, keepdims=True)  # desaturate: the object must be the salient one
    frame = (0.3 * frame + 0.7 * grey).astype(np.uint8)
    dy = np.abs(np.arange(height, dtype=np.float32) - (height - 1) / 2)[:, None]
    dx = np.abs(np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, :]
    disc_fits = share * height * width <= math.pi * (min(height, width) / 2) ** 2
    distance = np.hypot(dy, dx) if disc_fits else np.maximum(dy / height, dx / width)
    count = round(share * height * width)
    nearest = np.argsort(distance.ravel(), kind="stable")[:count]
    frame.reshape(-1, 3)[nearest] = _shape_colour(rng)
    return frame


def write_image_manifest(folder: Path, count: int = 6, fmt: Literal["csv", "jsonl", "parquet"] = "csv",
                         bad_rows: int = 2, size: tuple[int, int] = (320, 180)) -> Path:
    """``count`` distinct images in ``folder/images`` and ``folder/manifest.<fmt>`` listing them.

    Columns are ``path`` (absolute) and ``caption``. Odd images are PNGs with a centred
    subject of growing size; even ones are JPEG scenes. ``bad_rows`` extra rows point
    alternately at a missing file and at a text file named ``.jpg``, which curation must
    reject rather than crash on.
    """
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"fmt must be csv, jsonl or parquet, got {fmt!r}")
    folder = Path(folder).resolve()
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    width, height = size
    rows = []
    for i in range(count):
        if i % 2:
            share = 0.05 + 0.5 * (i % 8) / 8
            rgb, path = write_subject_frame(height, width, share, seed=i), images / f"image_{i:03d}.png"
            caption = f"a coloured object filling {share:.0%} of a plain frame, image {i}"
        else:
            kind = KINDS[(i // 2) % len(KINDS)]
            rgb = _RENDERERS[kind](ShotSpec(kind, 1, seed=100 + i), height, width)(0)
            path = images / f"image_{i:03d}.jpg"
            caption = f"a synthetic {kind.replace('_', ' ')} scene, image {i}"
        Image.fromarray(rgb).save(path)
        rows.append({"path": str(path), "caption": caption})
    for j in range(bad_rows):
        path = images / f"missing_{j:03d}.jpg"
        if j % 2:
            path = images / f"not_an_image_{j:03d}.jpg"
            path.write_text("this is text, not a JPEG\n", encoding="utf-8")
        rows.append({"path": str(path), "caption": f"an unreadable row {j}"})
    manifest = folder / f"manifest.{fmt}"
    if fmt == "csv":
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("path", pa.string()), ("caption", pa.string())])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), manifest)
    return manifest


# ------------------------------------------------------------------------ broken files

BROKEN_NAMES = {
    "zero_byte": "zero_byte.mp4", "truncated": "truncated.mp4", "text": "not_a_video.mp4",
    "audio_only": "audio_only.mp4", "one_frame": "one_frame.mp4", "tiny": "tiny_8x8.mp4",
    "vfr": "vfr.mp4", "corrupt_middle": "corrupt_middle.mp4",
}
VFR_DELTAS_MS = (20, 60, 33)  # as a phone's camera might stamp frames under changing light


def _mp4_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the top-level MP4 box ``kind``.

    Walking the box headers rather than searching for the four letters guarantees the
    damage lands in the media data, never in the headers or the index.
    """
    pos = 0
    while pos + 8 <= len(data):
        size, name = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        header = 8
        if size == 1:  # 64-bit size follows the type
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # runs to the end of the file
            size = len(data) - pos
        if name == kind:
            return pos + header, pos + size
        pos += size
    raise ValueError(f"no {kind!r} box in the file")


def _write_audio_only(path: Path, seconds: float = 1.0, rate: int = 44100) -> None:
    """An MP4 holding only an AAC sine tone: a container that opens but has no picture."""
    tone = (0.3 * np.sin(2 * math.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        step = stream.codec_context.frame_size or 1024
        for start in range(0, len(tone), step):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + step], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_broken_files(folder: Path) -> dict[str, Path]:
    """One file per way an input video can be bad; returns {kind: path} (see BROKEN_NAMES).

    Curation must turn each into a reject with a reason, never a crash or a hang.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / filename for name, filename in BROKEN_NAMES.items()}
    files["zero_byte"].write_bytes(b"")
    files["text"].write_text("This is a text file wearing an .mp4 extension.\n", encoding="utf-8")
    _write_audio_only(files["audio_only"])
    write_video(files["one_frame"], [ShotSpec("static", 1, seed=12)])
    write_video(files["tiny"], [ShotSpec("moving_shape", 24, seed=13)], size=(8, 8))

    # PyAV's mp4 muxer writes the moov index last, so the first 40% has no index at all.
    write_video(files["truncated"], [ShotSpec("pan", 48, seed=11)])
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: int(len(data) * 0.4)])

    vfr_frames = 36
    stamps = np.cumsum([0] + [VFR_DELTAS_MS[i % 3] for i in range(vfr_frames - 1)]).tolist()
    encode_frames(files["vfr"], _video_frames([ShotSpec("moving_shape", vfr_frames, seed=16)], 96, 160), 30, (160, 96),
            pts_ms=stamps)

    # Random bytes over the middle fifth of the media data: the index still opens the file,
    # but the NAL units there (and the frames predicted from them) no longer decode.
    write_video(files["corrupt_middle"], [ShotSpec("pan", 36, seed=14), ShotSpec("texture", 36, seed=15)])
    data = bytearray(files["corrupt_middle"].read_bytes())
    start, end = _mp4_box(bytes(data), b"mdat")
    lo, hi = start + 2 * (end - start) // 5, start + 3 * (end - start) // 5
    data[lo:hi] = np.random.default_rng(3).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    files["corrupt_middle"].write_bytes(bytes(data))
    return files


# ------------------------------------------------------------------------------ corpus


def write_sample_corpus(folder: Path, videos: int = 3, seed: int = 0, size: tuple[int, int] = (320, 180)) -> dict:
    """A small corpus shaped like a user's dump, deterministic for ``seed``.

    ``folder`` gets ``videos`` multi-shot videos (3-5 shots of 36-72 frames at 24 fps, each
    with a static shot and one dissolve, the rest hard cuts) with ``.txt`` caption sidecars,
    ``broken/`` from write_broken_files, and ``images/`` plus ``manifest.csv`` from
    write_image_manifest. Returns {"videos": [SyntheticVideo], "broken": {...}, "manifest": Path}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for v in range(videos):
        count = int(rng.integers(3, 6))
        kinds = [str(k) for k in rng.permutation(KINDS)] + [str(rng.choice(KINDS))]
        kinds = kinds[:count]
        if "static" not in kinds:
            kinds[int(rng.integers(count))] = "static"
        dissolve_at = int(rng.integers(1, count))
        shots = [
            ShotSpec(kind, int(rng.integers(36, 73)), "dissolve" if s == dissolve_at else "cut",
                     seed=seed * 1000 + v * 10 + s)
            for s, kind in enumerate(kinds)
        ]
        name = f"video_{v:03d}"
        written.append(write_video(folder / f"{name}.mp4", shots, size=size))
        caption = f"synthetic video {v}: " + ", then ".join(k.replace("_", " ") for k in kinds)
        (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    broken = write_broken_files(folder / "broken")
    manifest = write_image_manifest(folder, fmt="csv")
    return {"videos": written, "broken": broken, "manifest": manifest}


def write_planted_fingerprints(uri: Path, rows: int, copies: int, seed: int = 0, cosine: float = 0.97,
                               fragments: int = 8) -> dict[str, str]:
    """A clips table of ``rows`` random unit fingerprints (the columns the near-duplicate
    finder reads), ``copies`` of which copy an earlier clip at ``cosine``; returns
    ``{copy: original}``, which is exactly what the finder should report (the originals
    score higher). Random vectors spread evenly over the sphere, so any two other clips
    agree by about 0 +- 0.07."""
    from pipeline.tables import FINGERPRINT

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, FINGERPRINT.list_size)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    originals = rng.choice(rows // 2, copies, replace=False)
    noise = rng.normal(size=(copies, FINGERPRINT.list_size)).astype(np.float32)
    noise -= (noise * vectors[originals]).sum(1, keepdims=True) * vectors[originals]  # orthogonal to its original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors[rows // 2 + np.arange(copies)] = cosine * vectors[originals] + math.sqrt(1 - cosine**2) * noise
    ids = [f"c{i:08d}" for i in range(rows)]
    write_fingerprint_table(uri, ids, vectors, np.where(np.arange(rows) < rows // 2, 6.0, 5.0), fragments)
    return {ids[rows // 2 + i]: ids[o] for i, o in enumerate(originals)}


def write_fingerprint_table(uri: Path, ids: list[str], vectors: np.ndarray, aesthetic: np.ndarray,
                            fragments: int = 1) -> None:
    """A clips table holding only the columns the near-duplicate finder reads: the given
    ids, fingerprints and aesthetic scores, and one size for every clip."""
    import lance
    import pyarrow as pa

    from pipeline.tables import FINGERPRINT

    rows = len(ids)
    table = pa.table({
        "clip_id": ids,
        "fingerprint": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()),
                                                         FINGERPRINT.list_size),
        "aesthetic": pa.array(aesthetic, pa.float32()),
        "video_width": pa.array([320] * rows, pa.int32()), "video_height": pa.array([180] * rows, pa.int32()),
        "num_frames": pa.array([48] * rows, pa.int32()),
    })
    lance.write_dataset(table, str(uri), mode="overwrite", max_rows_per_file=max(1, -(-rows // fragments)))
