"""The two figures the demo measures on held-out clips, trained against untrained.

First-frame fidelity: the I2V promise is that the video starts from the given image; PSNR
of the generated first frame against that image (both at the output size). Motion
agreement: whether the generated video moves the way the held-out clip did after that
frame; the cosine between the two videos' average optical-flow vectors (1: same direction,
0: unrelated, -1: opposite), which a model that ignores the image cannot beat on average.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from curation.scorers.motion import mean_flow


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images of one size, in dB."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def first_frame_psnr(video: np.ndarray, image: np.ndarray) -> float:
    """PSNR of ``video[0]`` against ``image`` resized to the video's frame size."""
    height, width = video.shape[1:3]
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
    return psnr(video[0], resized)


def flow_direction(frames: np.ndarray) -> np.ndarray:
    """The average flow vector over consecutive frame pairs of ``(F, H, W, 3)`` frames."""
    if len(frames) < 2:
        raise ValueError("motion needs at least two frames")
    return np.mean([mean_flow(a, b) for a, b in zip(frames[:-1], frames[1:])], axis=0)


def motion_agreement(generated: np.ndarray, reference: np.ndarray) -> float:
    """Cosine of the average flow directions of two videos sampled at the same rate."""
    g, r = flow_direction(generated), flow_direction(reference)
    norm = float(np.linalg.norm(g) * np.linalg.norm(r))
    return 0.0 if norm < 1e-9 else float(g @ r) / norm
