"""Burned-in text over real encoded video, with the text's true boxes: subtitles along the
bottom and a watermark in a corner, for text-overlay detectors and the curation passes that
use them.

Text is drawn with PIL in a TrueType font that ships with matplotlib (a pinned dependency),
so no font is downloaded and every machine draws the same glyphs. The background is a slow
camera pan over a picture (a photograph, ``photo_like``, a gradient, a texture): the text
stays put while the picture moves under it, as burned-in subtitles do.

``write_overlay_set`` writes the labelled set that tests/test_text_overlays.py and
benchmarks/text_overlays.py share; ``sample_frames`` decodes a clip at 1 fps as curation
samples it. Encoding goes through ``support.synthetic.encode_frames``, so these clips are encoded
exactly as the rest of the synthetic corpus (x264 veryfast, allocations filled for repeatable bytes).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from support.synthetic import ShotSpec, encode_frames, photo_like, sample_photographs, smooth_gradient, write_video

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), in frame pixels
Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]


def font_path(bold: bool = False) -> Path:
    """matplotlib's DejaVu Sans: a TrueType font present wherever the project installs."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("matplotlib is not installed: it carries the font the overlays are drawn in")
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's DejaVu Sans font is missing from the install")
    return path


@dataclass(frozen=True)
class Subtitle:
    """White lines centred along the bottom, each ``size`` of the frame height tall (the
    font's em size), with a dark outline ``outline`` of that size thick, as broadcast and
    fan subtitles are drawn. ``margin`` is the gap below the last line, in frame heights."""

    lines: tuple[str, ...]
    size: float = 0.06
    outline: float = 0.08
    margin: float = 0.06
    bold: bool = False


@dataclass(frozen=True)
class Watermark:
    """One line of text in a corner, semi-transparent white without outline, as a channel
    or stock-footage mark. ``size`` and ``margin`` are in frame heights."""

    text: str
    size: float = 0.045
    corner: Corner = "top_right"
    opacity: float = 0.7
    margin: float = 0.04
    bold: bool = True


def _font(size_px: int, bold: bool) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(bold)), max(4, size_px))


def burn_subtitle(rgb: np.ndarray, subtitle: Subtitle) -> tuple[np.ndarray, list[Box]]:
    """``rgb`` with ``subtitle`` drawn in; returns the frame and one ink box per line
    (glyphs and outline, as PIL measures them)."""
    height, width = rgb.shape[:2]
    font = _font(round(subtitle.size * height), subtitle.bold)
    stroke = max(1, round(subtitle.outline * subtitle.size * height))
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    line_step = round(1.25 * subtitle.size * height)
    bottom = height - round(subtitle.margin * height)
    boxes: list[Box] = []
    for row, text in enumerate(subtitle.lines):
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        baseline_y = bottom - (len(subtitle.lines) - row) * line_step
        x = (width - (x1 - x0)) // 2 - x0
        draw.text((x, baseline_y), text, font=font, fill=(255, 255, 255), stroke_width=stroke,
                  stroke_fill=(12, 12, 12))
        boxes.append(_clip_box(draw.textbbox((x, baseline_y), text, font=font, stroke_width=stroke), width, height))
    return np.asarray(image), boxes


def burn_watermark(rgb: np.ndarray, mark: Watermark) -> tuple[np.ndarray, list[Box]]:
    """``rgb`` with ``mark`` blended in at its opacity; returns the frame and its ink box."""
    height, width = rgb.shape[:2]
    font = _font(round(mark.size * height), mark.bold)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = draw.textbbox((0, 0), mark.text, font=font)
    margin = round(mark.margin * height)
    x = margin - x0 if mark.corner.endswith("left") else width - margin - x1
    y = margin - y0 if mark.corner.startswith("top") else height - margin - y1
    draw.text((x, y), mark.text, font=font, fill=255)
    alpha = np.asarray(layer, dtype=np.float32)[..., None] * (mark.opacity / 255)
    out = rgb.astype(np.float32) * (1 - alpha) + 255 * alpha
    return (out + 0.5).astype(np.uint8), [_clip_box(draw.textbbox((x, y), mark.text, font=font), width, height)]


def _clip_box(box: Sequence[float], width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1))


def box_share(boxes: Sequence[Box], width: int, height: int) -> float:
    """Share of a ``width`` x ``height`` frame covered by the union of ``boxes``: the text
    share an ideal detector reports."""
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    return float(covered.mean())


@dataclass(frozen=True)
class OverlayVideo:
    """What was written: the file, and per frame the true boxes of the text burned into it."""

    path: Path
    fps: int
    width: int
    height: int
    boxes: list[list[Box]]

    def share(self, frame: int) -> float:
        return box_share(self.boxes[frame], self.width, self.height)


def fine_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Grain at the pixel scale, as RGB uint8: white noise blurred by a 0.8 px Gaussian with
    a standard deviation of 46 grey levels, tinted green (gravel, foliage in the distance,
    heavy film grain). Its thin bright and dark specks are the hard negative of a detector
    that looks for thin strokes."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.8)
    luma = 0.5 + 0.18 * (noise - noise.mean()) / noise.std()
    return (np.clip(luma[..., None] * np.array([0.9, 1.0, 0.7], np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def _pan_frames(picture: np.ndarray, size: tuple[int, int], frames: int, speed: float) -> Iterator[np.ndarray]:
    """Windows of ``size`` sliding right, then back, across ``picture`` at ``speed`` px per
    frame; the picture is scaled (keeping its aspect) so that it is a quarter wider than
    the window and at least as tall."""
    width, height = size
    rows, cols = picture.shape[:2]
    scale = max(height / rows, 1.25 * width / cols)
    picture = cv2.resize(picture, (math.ceil(cols * scale), math.ceil(rows * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top = (picture.shape[0] - height) // 2
    span = picture.shape[1] - width
    for i in range(frames):
        x = (i * speed) % (2 * span) if span else 0.0
        x = x if x <= span else 2 * span - x
        left = int(x)
        yield np.ascontiguousarray(picture[top : top + height, left : left + width])


def write_overlay_video(path: Path, picture: np.ndarray, seconds: float = 3.0, fps: int = 12,
                        size: tuple[int, int] = (512, 288), subtitles: Sequence[Subtitle] = (),
                        watermark: Watermark | None = None, pan_speed: float = 2.0,
                        crf: int = 23) -> OverlayVideo:
    """A pan over ``picture`` as H.264, with ``subtitles`` shown one after another (each an
    equal share of the clip, as successive subtitle cues) and ``watermark`` throughout.

    Without either it is a clean clip of the same picture and motion: the negative that
    pairs with a subtitled one.
    """
    width, height = size
    count = max(1, round(seconds * fps))
    truth: list[list[Box]] = []

    def frames() -> Iterator[np.ndarray]:
        for i, frame in enumerate(_pan_frames(picture, size, count, pan_speed)):
            boxes: list[Box] = []
            if subtitles:
                frame, lines = burn_subtitle(frame, subtitles[i * len(subtitles) // count])
                boxes += lines
            if watermark is not None:
                frame, mark = burn_watermark(frame, watermark)
                boxes += mark
            truth.append(boxes)
            yield frame

    encode_frames(Path(path), frames(), fps, (width, height), "h264", crf)
    return OverlayVideo(Path(path), fps, width, height, truth)


# ------------------------------------------------------------------------- a labelled set


@dataclass(frozen=True)
class LabelledClip:
    """One clip of ``write_overlay_set``: ``kind`` is "clean", "subtitle" or "watermark",
    ``boxes`` the true text boxes of each frame (empty lists for a clean clip)."""

    name: str
    kind: Literal["clean", "subtitle", "watermark"]
    path: Path
    boxes: list[list[Box]]

    def share(self, frame: int, width: int, height: int) -> float:
        return box_share(self.boxes[frame], width, height)


def overlay_pictures() -> dict[str, np.ndarray]:
    """The pictures the set pans over: a real photograph (matplotlib's, which a pinned
    dependency ships), ``photo_like``, a smooth gradient and pixel-scale grain."""
    found = sample_photographs()
    if not found:
        raise FileNotFoundError("no real photograph: matplotlib's sample data (grace_hopper.jpg) is missing")
    return {
        "photograph": np.asarray(Image.open(found[0]).convert("RGB")),
        "photo_like": photo_like(400, 800, seed=1),
        "gradient": smooth_gradient(400, 800, seed=2),
        "fine_texture": fine_texture(400, 800, seed=3),
    }


# One subtitle layout per picture: 1 or 2 lines, fonts of 4-9% of the frame height, two
# successive cues on the photograph; watermarks opaque-ish bold and translucent regular.
SET_SUBTITLES: dict[str, tuple[Subtitle, ...]] = {
    "photograph": (Subtitle(("I never said that she stole my money",), size=0.05),
                   Subtitle(("Where were you last night?",), size=0.05)),
    "photo_like": (Subtitle(("The first line of a two-line subtitle", "and here is the second line of it"),
                            size=0.06),),
    "gradient": (Subtitle(("BIG TITLE TEXT",), size=0.09, bold=True),),
    "fine_texture": (Subtitle(("small subtitles are hard to see", "even when there are two lines"), size=0.04),),
}
SET_WATERMARKS: dict[str, Watermark] = {
    "photo_like": Watermark("NEWS 24"),
    "photograph": Watermark("stockclips.com", corner="bottom_right", opacity=0.6, bold=False),
}
# Synthetic shot kinds added as clean clips: rotating stripes, moving shapes, still shapes
# over texture, a pan over noise.
SET_SHOT_KINDS = ("texture", "moving_shape", "static", "pan")


def write_overlay_set(folder: Path, size: tuple[int, int] = (512, 288), fps: int = 12,
                      seconds: float = 3.0) -> list[LabelledClip]:
    """Fourteen labelled H.264 clips in ``folder``: each picture of ``overlay_pictures``
    clean and with its subtitles, two with a watermark, and the synthetic shot kinds clean.
    The set the text-overlay tests and benchmark share."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds * fps))
    clips: list[LabelledClip] = []
    pictures = overlay_pictures()
    for name, picture in pictures.items():
        clean = write_overlay_video(folder / f"clean_{name}.mp4", picture, seconds, fps, size)
        clips.append(LabelledClip(f"clean {name}", "clean", clean.path, clean.boxes))
        subbed = write_overlay_video(folder / f"subtitled_{name}.mp4", picture, seconds, fps, size,
                                     subtitles=SET_SUBTITLES[name])
        clips.append(LabelledClip(f"subtitled {name}", "subtitle", subbed.path, subbed.boxes))
    for name, mark in SET_WATERMARKS.items():
        marked = write_overlay_video(folder / f"watermarked_{name}.mp4", pictures[name], seconds, fps, size,
                                     watermark=mark)
        clips.append(LabelledClip(f"watermarked {name}", "watermark", marked.path, marked.boxes))
    for seed, kind in enumerate(SET_SHOT_KINDS, start=5):
        video = write_video(folder / f"clean_{kind}.mp4", [ShotSpec(kind, count, seed=seed)], fps=fps, size=size)
        clips.append(LabelledClip(f"clean {kind}", "clean", video.path, [[] for _ in range(count)]))
    return clips


def sample_frames(path: Path, fps: float = 1.0) -> list[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8) of the first decoded frame at or after each ``1 / fps``
    seconds, as curation samples frames for its scores."""
    sampled, due = [], 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        for frame in container.decode(stream):
            seconds = float(frame.pts * stream.time_base)
            if seconds + 1e-6 >= due:
                sampled.append((round(seconds * rate), frame.to_ndarray(format="rgb24")))
                due += 1 / fps
    return sampled
