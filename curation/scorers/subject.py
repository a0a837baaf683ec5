"""The main subject's share of the frame, from a weight-free saliency map.

Two classical cues, averaged: spectral residual (Hou & Zhang, 2007), which finds what is
unexpected in the image's spectrum (edges and small objects), and frequency-tuned colour
contrast (Achanta et al., 2009), which fills in the inside of large flat objects that the
spectral cue sees only at their borders. The subject is the largest connected salient
region, holes filled.
"""

from __future__ import annotations

import cv2
import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi - lo > 1e-9 else np.zeros_like(x)


def spectral_residual(grey: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(grey.astype(np.float64))
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    return _normalise(cv2.GaussianBlur(saliency, (0, 0), 2.5))


def colour_contrast(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(cv2.GaussianBlur(rgb, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float64)
    return _normalise(np.linalg.norm(lab - lab.reshape(-1, 3).mean(axis=0), axis=-1))


def saliency_map(rgb: np.ndarray, work_size: int = 64) -> np.ndarray:
    """A 0..1 saliency map of ``work_size`` x ``work_size``."""
    small = cv2.resize(np.ascontiguousarray(rgb), (work_size, work_size), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    return _normalise(0.5 * spectral_residual(grey) + 0.5 * colour_contrast(small))


def subject_share(rgb: np.ndarray) -> float:
    """Share (0..1) of the frame covered by the largest salient region, holes filled.

    A flat or uniformly textured frame has no region that stands out: Otsu's threshold
    then splits noise, and the share comes out small or the map is empty (0).
    """
    saliency = saliency_map(rgb)
    if saliency.max() - saliency.min() < 1e-6:
        return 0.0
    levels = (saliency * 255).astype(np.uint8)
    _, mask = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return 0.0
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return float(filled.mean())
