"""A weight-free fingerprint of a picture for finding near-duplicates: the low frequencies of
its luminance, as a unit vector.

The frame is shrunk to 32x32 grey and transformed with a 2D DCT; the 8x8 lowest frequencies
without the DC term (63 numbers) describe its layout of light and dark, the part of a picture
that survives re-encoding, rescaling, a few percent of crop and a brightness shift (the DC
term, dropped, is the brightness; the norm, divided out, is the contrast). This is the
perceptual hash's input (pHash keeps only the signs; the vector keeps the amounts, so that a
vector index can rank by distance). A clip's fingerprint is its keyframes' fingerprints side
by side, scaled so that the dot product of two clips is the mean of their keyframes' cosine
similarities. A picture asked about in ``curate search`` gets its one frame's fingerprint in
every keyframe place, which leaves its cosine with a clip the mean over the clip's keyframes.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

SIDE = 32  # the shrunk frame, px
LOW = 8  # frequencies kept per axis
FRAME_DIMS = LOW * LOW - 1
KEYFRAMES = 3  # slots in a stored fingerprint (pipeline.tables.FINGERPRINT)


def frame_fingerprint(rgb: np.ndarray) -> np.ndarray:
    """``(FRAME_DIMS,)`` float32 unit vector of an RGB uint8 frame of any size."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    coefficients = cv2.dct(small)[:LOW, :LOW].ravel()[1:]
    norm = float(np.linalg.norm(coefficients))
    if norm < 1e-3:  # a flat frame has no layout: any direction is as good as another
        return np.zeros(FRAME_DIMS, np.float32)
    return (coefficients / norm).astype(np.float32)


def clip_fingerprint(frame_fingerprints: Sequence[np.ndarray]) -> np.ndarray:
    """Keyframes' fingerprints side by side, scaled to a unit vector overall."""
    return (np.concatenate(list(frame_fingerprints)) / math.sqrt(len(frame_fingerprints))).astype(np.float32)


def image_fingerprint(rgb: np.ndarray) -> np.ndarray:
    """A picture's fingerprint in the clips' layout: its frame's in each keyframe place."""
    return clip_fingerprint([frame_fingerprint(rgb)] * KEYFRAMES)
