"""Camera motion, weight-free: a global motion model fitted to the dense flow that the motion
score already computed, and one class per clip.

Per sample, the flow field (Farneback, at the work width) is fitted with a similarity model
about the frame's centre: a shift, a zoom and a rotation,

    u = pan  + zoom * x - rotation * y
    v = tilt + rotation * x + zoom * y,

with x, y and the flow in frame diagonals (per second), so the numbers mean the same at any
resolution and sampling rate, as the motion score's do. The fit is iteratively reweighted
least squares with Cauchy weights: a moving subject is a minority of the pixels, and its flow
gets a small weight instead of dragging the camera with it. ``explained`` is the share of the
pixels that the model fits to within a pixel of displacement.

A clip's samples are then summarised (``classify``): their median model is the camera's
move; the spread of their shifts around it is shake. Directions are the camera's, the
opposite of the picture's: the picture moving left is a pan to the right, moving down a
tilt up, growing a zoom in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipeline.config.schema import CameraConfig
FIT_STEP = 4  # flow pixels read along each axis: every fourth one (160x91 -> 920 points; the field is smooth over Farneback's 15 px window)
IRLS_ROUNDS = 6
INLIER_PX = 1.0  # displacement (work-width pixels) within which the model explains a pixel
HALF_DIAGONAL = 0.5  # where a zoom or a rotation is measured: the frame's corner, in diagonals


@dataclass(frozen=True)
class GlobalMotion:
    """The picture's motion between two frames, per second, in frame diagonals."""

    pan: float  # rightward shift of the picture
    tilt: float  # downward shift
    zoom: float  # relative growth per second
    rotation: float  # radians per second, clockwise on screen
    explained: float  # share of the pixels the model fits

    def edge_speeds(self) -> dict[str, float]:
        """Each component as the speed it gives the picture's corner, diagonals per second,
        so that a shift, a zoom and a rotation can be compared."""
        return {"pan": abs(self.pan), "tilt": abs(self.tilt),
                "zoom": abs(self.zoom) * HALF_DIAGONAL, "rotate": abs(self.rotation) * HALF_DIAGONAL}


def fit_global_motion(field: np.ndarray, seconds: float) -> GlobalMotion:
    """The similarity model of a flow ``field`` ``(h, w, 2)`` in pixels, measured across
    ``seconds``. Each round solves the model's 4x4 weighted normal equations: 0.75 ms for a
    160x91 field, where a general least-squares solver over every second pixel took 5.2 ms."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    height, width = field.shape[:2]
    diagonal = math.hypot(width, height)
    x, y = _grid(height, width)
    u = field[::FIT_STEP, ::FIT_STEP, 0].ravel().astype(np.float64) / diagonal
    v = field[::FIT_STEP, ::FIT_STEP, 1].ravel().astype(np.float64) / diagonal
    r2 = x * x + y * y
    weights = np.ones_like(u)
    params = np.zeros(4)
    for _ in range(IRLS_ROUNDS):
        sw, swx, swy, swr2 = weights.sum(), weights @ x, weights @ y, weights @ r2
        normal = np.array([[sw, 0, swx, -swy], [0, sw, swy, swx], [swx, swy, swr2, 0], [-swy, swx, 0, swr2]], np.float64)
        rhs = np.array([weights @ u, weights @ v, weights @ (x * u + y * v), weights @ (x * v - y * u)], np.float64)
        params = np.linalg.solve(normal, rhs)
        pan, tilt, zoom, turn = params
        residual = np.hypot(u - (pan + zoom * x - turn * y), v - (tilt + turn * x + zoom * y))
        # Cauchy weights at 2.4 robust sigmas; the floor keeps a perfect fit from dividing by 0
        scale = 2.385 * max(1.4826 * float(np.median(residual)), 0.05 / diagonal)
        weights = 1.0 / (1.0 + (residual / scale) ** 2)
    explained = float(np.mean(residual * diagonal < INLIER_PX))
    pan, tilt, zoom, rotation = (float(p) / seconds for p in params)
    return GlobalMotion(pan, tilt, zoom, rotation, explained)


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted pixels' positions about the centre, in frame diagonals (one field size per video)."""
    diagonal = math.hypot(width, height)
    ys, xs = np.mgrid[0:height:FIT_STEP, 0:width:FIT_STEP].astype(np.float64)
    return ((xs - (width - 1) / 2) / diagonal).ravel(), ((ys - (height - 1) / 2) / diagonal).ravel()


def _direction(component: str, model: GlobalMotion) -> str:
    if component == "pan":
        return "pan_right" if model.pan < 0 else "pan_left"
    if component == "tilt":
        return "tilt_up" if model.tilt > 0 else "tilt_down"
    if component == "zoom":
        return "zoom_in" if model.zoom > 0 else "zoom_out"
    return "rotate"


def _move(model: GlobalMotion, static_speed: float) -> str:
    """One model's class, shake aside: static, or the direction of its fastest component."""
    speeds = model.edge_speeds()
    fastest = max(speeds, key=lambda k: speeds[k])
    return "static" if speeds[fastest] < static_speed else _direction(fastest, model)


def classify(samples: Sequence[GlobalMotion], cfg: CameraConfig) -> Optional[tuple[str, float]]:
    """A clip's camera class and a confidence in 0..1, or None without samples.

    - ``shaky``: the samples' shifts scatter around their median by more than
      ``shaky_speed`` and by more than the median shift itself (a hand-held camera that
      drifts one way while it trembles is shaky; a steady fast pan is not);
    - ``static``: the median model moves the corner by less than ``static_speed``;
    - otherwise the direction of the median model's fastest component.

    The confidence is the share of the samples whose own class (shake aside) agrees with the
    clip's, times the median share of the pixels the models explain; for ``shaky``, the
    scatter's share of scatter plus median shift, times the same.
    """
    if not samples:
        return None
    median = GlobalMotion(*(float(np.median([getattr(s, f) for s in samples]))
                            for f in ("pan", "tilt", "zoom", "rotation", "explained")))
    explained = median.explained
    shifts = np.array([[s.pan - median.pan, s.tilt - median.tilt] for s in samples])
    scatter = float(np.sqrt(np.mean(np.sum(shifts**2, axis=1))))
    drift = math.hypot(median.pan, median.tilt)
    if len(samples) >= 3 and scatter > cfg.shaky_speed and scatter > drift:
        return "shaky", round(scatter / (scatter + drift) * explained, 3)
    label = _move(median, cfg.static_speed)
    agree = float(np.mean([_move(s, cfg.static_speed) == label for s in samples]))
    return label, round(agree * explained, 3)
