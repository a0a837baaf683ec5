"""Gradual transitions (cross-fades) in a stream of small analysis frames.

PySceneDetect's detectors compare neighbouring frames, so a dissolve, which spreads the
change between two shots over many frames, rarely crosses their thresholds and clips run
straight through it. This detector finds candidates cheaply and then asks whether motion
explains them:

1. Candidates: the picture's coarse colour layout (a 16x9 thumbnail) moves along a straight
   line: frame ``t`` is the average of frames ``t - k`` and ``t + k`` while those two differ
   clearly. A hard cut fails this (frame ``t`` equals one end), and so does fast or erratic
   motion; but slow camera motion over smooth content passes it for seconds on end (pans of
   0.25-4 px per analysis frame and 0.2-1% per frame zooms over photographs and gradients:
   runs of such frames at every thumbnail size tried, 16x9 to 64x36), and so does an object
   gliding over a still background. Runs longer than ``MAX_SECONDS`` are dropped as lighting
   drifts, but a shorter shot is all one run.
2. Motion veto: a blended frame holds content from both shots in proportions that change
   with time, which no movement of either picture produces; a moving camera's frame is an
   earlier frame moved. So a candidate frame stands only if the best motion from its
   neighbours a quarter second away leaves a large share of the change unexplained. The
   models, cheapest first: one shift (phase correlation); dense Farneback flow, which follows
   objects moving over a still background, where one warp cannot (it left 0.24 of such a
   change, one affine warp 0.54-0.84); and an affine warp of the whole frame fitted by
   Gauss-Newton, which follows zooms and, unlike dense flow, motion over gradients with no
   texture (flow left 1.0 there, the warp 0.1-0.45).

   Measured on 64x36 grey frames blurred with sigma 1.2, as the share of the change the best
   model leaves, the worse of the two neighbours: 0.03-0.43 (99% under 0.34) on 4,300
   candidate frames of pans, tilts and zooms over photographs (a real one, photo-like ones,
   terrain) and gradients at 448x256, 480x270 and 720p and of objects gliding over a photo;
   over 0.52 on 99% of 900 frames inside 114 fades of 12-36 frames between such shots, into
   and out of black, and between the synthetic shot kinds (95% over 0.67). The exception is
   fast motion over smooth pictures on both sides of a fade, down to 0.35: a warp of a ramp
   can imitate a change of gain, so a gradient fading to black, or smooth terrain into a
   gradient, loses the frames nearest the clean shot. A clean frame next to a fade is new to
   its neighbour inside the fade but explained by its own shot's side (shares such as 0.95
   and 0.25), while a blended frame is new to both (the better side leaves over 0.39 of the
   worse side's share on 99% of fade frames): ``BALANCE`` tells them apart.

The blended frames are located from the colour layout's steady drift: each frame-to-frame
change, projected on the direction from the shot before to the shot after, is a constant
positive step inside a dissolve and about zero outside it. The motion veto then reads every
``k // 2``-th frame of that span (the stretch it leaves unexplained is the fade), so its cost
is paid per candidate span, not per frame. End to end on 254 files of camera motion and 130
fades: no frame of camera motion lost (the detail-dip test this replaces lost all of a 3 s
1%-per-frame zoom over a photo-like picture at 448x256, and of three more such pictures), and
the same 3 fades missed, all three with fast motion under a long fade, which the candidate
test never admits.

The detector keeps a fixed number of frames' features (two small arrays each), so its memory
does not grow with the video; ``settled`` tells the caller up to where no dissolve can still
be reported, so segments before that can be emitted.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from typing import Optional

import cv2
import numpy as np

COARSE_SIZE = (16, 9)  # colour layout: coarse enough that textures and edges average out
FINE_PIXELS = 64 * 36  # area of the grey frames the motion veto reads (aspect kept)
FINE_BLUR = 1.2  # sigma: drops codec noise and the detail x264 B-frames lose, keeps structure
MARGIN = 3  # fine pixels ignored at each border, where a moving camera uncovers new content
MIN_CHANGE = 5.0  # mean |difference| (0..255) across a window below which nothing changes
MAX_SECONDS = 3.0  # longer runs of linear change are slow lighting changes, not dissolves
STEP_SHARE = 0.4  # a frame belongs to the fade while its step is this share of the typical one
MOTION_SHARE = 0.45  # a blend leaves more than this share of its change to the best motion
BALANCE = 0.3  # ... and from its other neighbour at least this share as much
WARP_STEPS = 6  # Gauss-Newton steps of the affine fit (at 64x36 it settles in 4-6)
SETTLED = 0.03  # ... and it stops once a step improves the residual by less than this share


class DissolveDetector:
    """Streaming cross-fade detector: feed every frame in order, collect ``[start, end)`` spans.

    ``threshold`` is the largest blend residual, as a share of the change across the window,
    at which a frame still counts as halfway between its neighbours (``curation.split.
    dissolve_threshold``: 0.3 admits the frames of a linear fade two or more frames in from
    its ends, and enough frames of fades with motion under them; 0.2 missed three of 55
    generated fades between moving shots, 0.25 and 0.3 none).
    """

    def __init__(self, fps: float, threshold: float) -> None:
        self.k = max(2, round(fps / 4))  # half-window: a quarter second
        self.reach = 3 * self.k  # how far a fade may extend beyond its linear frames
        self.threshold = threshold
        self.max_frames = max(4 * self.k, round(MAX_SECONDS * fps))
        self._coarse: dict[int, np.ndarray] = {}
        self._fine: dict[int, np.ndarray] = {}
        self._pairs: dict[int, tuple[float, float]] = {}  # a -> (share, enough) of frames a, a + k
        self._order: deque[int] = deque()
        self._history = self.max_frames + 2 * (self.reach + self.k) + 2  # a run, its fade, the veto's neighbours
        self._run: Optional[tuple[int, int]] = None  # first and last linear centre so far
        self._closed: deque[tuple[int, int]] = deque()  # ended runs waiting for their last frames
        self._too_long = False
        self._last = -1

    @property
    def settled(self) -> int:
        """Frames before this index can no longer fall inside a dissolve reported later: a
        fade starts at most ``reach`` frames before the first linear centre of its run."""
        firsts = [first for first, _ in self._closed] + [self._run[0] if self._run else self._last - self.k + 1]
        return min(firsts) - self.reach

    def process(self, index: int, bgr: np.ndarray) -> list[tuple[int, int]]:
        """Add frame ``index`` (BGR, any size; indices increasing, gaps allowed); returns the
        dissolves ``[start, end)`` that can now be judged."""
        self._remember(index, bgr)
        centre = index - self.k
        linear = self._is_linear(centre)
        if linear is not None:
            self._advance(centre, linear)
        return self._judge(ready_until=index)

    def finish(self) -> list[tuple[int, int]]:
        """Dissolves still open when the video ends."""
        if self._run is not None:
            self._closed.append(self._run)
            self._run = None
        return self._judge(ready_until=None)

    # -------------------------------------------------------------- features and tests

    def _remember(self, index: int, bgr: np.ndarray) -> None:
        """Keep frame ``index``'s features, read from the frame cropped to a whole number of
        blocks (128x72 of 128x73): INTER_AREA averages exact blocks fast, and took four times
        as long to shrink 128x73 to 64x36 or to 16x9."""
        factor = _fine_factor(bgr.shape[1], bgr.shape[0])
        size = (bgr.shape[1] // factor, bgr.shape[0] // factor)
        block = bgr[: size[1] * factor, : size[0] * factor]
        grey = cv2.cvtColor(cv2.resize(block, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        self._fine[index] = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), FINE_BLUR)
        self._coarse[index] = cv2.resize(block, COARSE_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
        self._order.append(index)
        self._last = index
        while self._order and self._order[0] < index - self._history:
            old = self._order.popleft()
            del self._coarse[old], self._fine[old]
            self._pairs.pop(old, None)

    def _is_linear(self, centre: int) -> Optional[bool]:
        """Whether ``centre`` lies halfway on a clear change; None when a frame is missing."""
        before, mid, after = (self._coarse.get(centre + d) for d in (-self.k, 0, self.k))
        if before is None or mid is None or after is None:
            return None
        # cv2's norms: a third of the time of the same numpy expressions on these small arrays.
        change = cv2.norm(after, before, cv2.NORM_L1) / mid.size
        residual = cv2.norm(mid, cv2.addWeighted(before, 0.5, after, 0.5, 0), cv2.NORM_L1) / mid.size
        return change > MIN_CHANGE and residual < self.threshold * change

    def _advance(self, centre: int, linear: bool) -> None:
        if not linear:
            self._too_long = False
            if self._run is not None and centre - self._run[1] > 2:  # gaps of two frames join
                self._closed.append(self._run)
                self._run = None
        elif not self._too_long:
            self._run = (self._run[0] if self._run else centre, centre)
            if centre - self._run[0] > self.max_frames:  # too slow for a dissolve: drop it
                self._run, self._too_long = None, True

    def _judge(self, ready_until: Optional[int]) -> list[tuple[int, int]]:
        """Dissolves among the ended runs whose frames are all at hand: a fade may reach
        ``reach`` frames past its run's last linear centre, and the motion veto reads ``k``
        frames past the fade (at the video's end, when ``ready_until`` is None, every frame
        there will be is at hand)."""
        found = []
        while self._closed and (ready_until is None or self._closed[0][1] + self.reach + self.k <= ready_until):
            first, last = self._closed.popleft()
            span = self._fade_span(first, last)
            blended = self._blended(*span) if span is not None else None
            if blended is not None:
                found.append(blended)
        return found

    def _fade_span(self, first: int, last: int) -> Optional[tuple[int, int]]:
        """The blended frames ``[start, end)`` of the run of linear centres ``first..last``:
        the frames into which the colour layout steps steadily from the shot before towards
        the shot after, at most ``reach`` frames beyond the run on either side."""
        lo, hi = first - self.k, last + self.k
        if lo not in self._coarse or hi not in self._coarse:
            return None
        direction = (self._coarse[hi] - self._coarse[lo]).ravel()
        direction /= np.linalg.norm(direction) + 1e-6
        # The steps into the linear centres are the fade's own: their median is its pace.
        pace = [x for x in (self._step(t, direction) for t in range(first, last + 2)) if x is not None]
        if not pace:
            return None
        floor = STEP_SHARE * float(np.median(pace))
        start, end = first, last
        while start > first - self.reach and (self._step(start - 1, direction) or 0.0) > floor:
            start -= 1
        while end < last + self.reach and (self._step(end + 1, direction) or 0.0) > floor:
            end += 1
        # ``start`` is the first frame stepped into, ``end`` the last: the next shot's first.
        return (start, end) if 2 <= end - start <= self.max_frames else None

    def _step(self, t: int, direction: np.ndarray) -> Optional[float]:
        """How far the colour layout moves along ``direction`` from frame ``t - 1`` to ``t``."""
        before, after = self._coarse.get(t - 1), self._coarse.get(t)
        return None if before is None or after is None else float((after - before).ravel() @ direction)

    def _blended(self, start: int, end: int) -> Optional[tuple[int, int]]:
        """The part of the span ``[start, end)`` that motion does not explain, or None.

        Probes the frames whose index is a multiple of ``k // 2`` (``_unexplained``), every
        other one first and the rest only beside an unexplained one. A run of linear
        change can hold a pan and the fade that follows it, so the fade is the longest
        stretch of at least two unexplained probes, bridging single explained ones (near a
        fade's ends one neighbour is almost the clean shot and explains the frame better
        than the other); the span is cut back only where two or more probes in a row are
        explained."""
        stride = max(1, self.k // 2)
        probes = list(range(-(-start // stride) * stride, end, stride))
        # Every other probe first (``k`` apart, so neighbouring probes share a pair of frames);
        # the ones between are read only next to an unexplained one.
        flagged = {i for i, t in enumerate(probes) if (t // stride) % 2 == 0 and self._unexplained(t)}
        flagged |= {j for i in flagged for j in (i - 1, i + 1) if 0 <= j < len(probes) and self._unexplained(probes[j])}
        groups: list[list[int]] = []
        for i in sorted(flagged):
            if groups and i - groups[-1][-1] <= 2:
                groups[-1].append(i)
            else:
                groups.append([i])
        groups = [g for g in groups if len(g) >= 2]
        if not groups:
            return None
        group = max(groups, key=lambda g: (g[-1] - g[0], len(g)))
        lo = start if group[0] <= 1 else probes[group[0] - 1] + 1
        hi = end if group[-1] >= len(probes) - 2 else probes[group[-1] + 1]
        return lo, hi

    def _unexplained(self, t: int) -> bool:
        """Whether frame ``t`` is new to both its neighbours a quarter second away: motion
        leaves at least ``MOTION_SHARE`` of the change from one of them, and from the other
        at least ``BALANCE`` times as much (a clean frame just past a fade is new to the
        frames inside the fade, but its own shot's side explains it several times better)."""
        if t not in self._fine:
            return False
        pairs = [a for a in (t - self.k, t) if a in self._fine and a + self.k in self._fine]
        if not pairs:
            return False
        worst = max(self._share(a, MOTION_SHARE) for a in pairs)
        if worst < MOTION_SHARE:
            return False
        return min(self._share(a, BALANCE * worst) for a in pairs) >= BALANCE * worst

    def _share(self, a: int, enough: float) -> float:
        """``unexplained_share`` of the change from frame ``a`` to frame ``a + k``.

        Kept, since probes ``k`` apart share a pair. Its models stop as soon as one leaves
        less than ``enough`` (camera motion is settled by the cheapest, and only pairs that
        reach into a fade pay for all four), so a kept answer stands for any ``enough`` it is
        already under, or for all when every model ran."""
        kept = self._pairs.get(a)
        every_model_ran = kept is not None and kept[0] >= kept[1]
        if kept is None or not (every_model_ran or kept[0] < enough):
            kept = (unexplained_share(self._fine[a], self._fine[a + self.k], enough), enough)
            self._pairs[a] = kept
        return kept[0]


def _fine_factor(width: int, height: int) -> int:
    """The whole factor that shrinks ``width`` x ``height`` nearest to ``FINE_PIXELS`` (64x36
    from 128x72 or 128x73)."""
    return max(1, round(math.sqrt(width * height / FINE_PIXELS)))


def unexplained_share(before: np.ndarray, after: np.ndarray, enough: float = 0.0) -> float:
    """The share of the change from ``before`` to ``after`` (grey float32 frames) that the
    best of the motion models leaves, inside the border ``MARGIN``: about 0 for motion,
    about 1 for new content. The models run cheapest first (a shift, dense flow, two affine
    fits), and the first to leave less than ``enough`` answers."""
    inner = _inner(*after.shape)
    change = float(np.abs(after - before)[inner].mean())
    if change < 1e-3:
        return 0.0
    (dx, dy), _ = cv2.phaseCorrelate(before, after)
    shift, rest = np.float32([[1, 0, -dx], [0, 1, -dy]]), np.float32([[1, 0, 0], [0, 1, 0]])
    target = enough * change
    best = np.inf
    for model in (lambda: _residual(before, after, shift), lambda: _dense_residual(before, after),
                  lambda: _fit_affine(before, after, shift, target), lambda: _fit_affine(before, after, rest, target)):
        best = min(best, model())
        if best < target:
            break
    return best / change


def _residual(before: np.ndarray, after: np.ndarray, warp: np.ndarray) -> float:
    """Mean |after - before warped by ``warp``| inside the margin."""
    return float(np.abs(after - _warp(before, warp))[_inner(*after.shape)].mean())


def _dense_residual(before: np.ndarray, after: np.ndarray) -> float:
    """Mean |after - before moved by Farneback flow| inside the margin."""
    flow = cv2.calcOpticalFlowFarneback(after, before, None, 0.5, 3, 9, 3, 5, 1.1, 0)
    xs, ys = _grid(*after.shape)
    moved = cv2.remap(before, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(after - moved)[_inner(*after.shape)].mean())


def _fit_affine(before: np.ndarray, after: np.ndarray, warp: np.ndarray, enough: float) -> float:
    """Gauss-Newton on the six parameters of ``warp`` (``after(x) ~ before(warp @ x)``) for
    at most ``WARP_STEPS`` steps, until the mean residual inside the margin is under
    ``enough`` or a step takes less than ``SETTLED`` of it off; returns that residual."""
    rows, cols = after.shape
    inner = _inner(rows, cols)
    xs, ys = (g[inner].ravel() for g in _grid(rows, cols))
    target = after[inner].ravel()
    best = np.inf
    for _ in range(WARP_STEPS):
        moved = _warp(before, warp)
        error = target - moved[inner].ravel()
        residual = float(np.abs(error).mean())
        if residual < enough or residual > (1 - SETTLED) * best:
            return min(best, residual)
        best = residual
        gx = cv2.Sobel(moved, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)[inner].ravel()
        gy = cv2.Sobel(moved, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)[inner].ravel()
        jacobian = np.stack([gx * xs, gx * ys, gx, gy * xs, gy * ys, gy], axis=1)
        hessian = jacobian.T @ jacobian
        hessian += np.eye(6, dtype=np.float32) * (1e-3 * np.trace(hessian) / 6 + 1e-6)  # flat frames stay solvable
        warp = warp + np.linalg.solve(hessian, jacobian.T @ error).reshape(2, 3).astype(np.float32)
    return min(best, _residual(before, after, warp))


def _warp(frame: np.ndarray, warp: np.ndarray) -> np.ndarray:
    rows, cols = frame.shape
    return cv2.warpAffine(frame, warp, (cols, rows), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=8)
def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates of a ``rows`` x ``cols`` frame, as float32 maps."""
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return xs, ys


def _inner(rows: int, cols: int) -> tuple[slice, slice]:
    return slice(MARGIN, rows - MARGIN), slice(MARGIN, cols - MARGIN)
