"""What a generated video is measured by, against the held-out clip whose first frame it animated.

Videos are uint8 ``(F, H, W, 3)``. Comparisons are at the output size, with the real frames
(and the input image, their frame 0) cut and resized as the model's input was, so a score
measures the model rather than a resampling difference.

- First-frame fidelity: the I2V promise that the video starts from the given image.
- Continuation against freeze-frame PSNR: how close frames 1..F-1 come to what the clip
  really did, beside the score of repeating the input image. A model that learned no motion
  matches the baseline; only one that predicts some of the real change beats it.
- Motion agreement: whether the video moves the way the clip did; the cosine between the
  two videos' average optical-flow vectors (1: same direction, 0: unrelated, -1: opposite),
  which a model that ignores the image cannot beat on average.
- Flicker and flow magnitude: temporal quality without a reference (VBench's temporal
  flickering and dynamic degree, with Farneback flow instead of RAFT).
- CLIP consistency: whether the frames still show what the input showed, where CLIP
  weights make the embedding mean something.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipeline.flow import flow_magnitude, mean_flow


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays of one shape, in dB.

    Identical arrays score as if one value differed by one level (``10 log10(255^2 n)``, the
    most any differing pair can score) instead of infinity, so means over clips and
    differences between runs stay numbers (a still real clip repeats its input exactly, and
    then so does the freeze-frame baseline)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1.0 / a.size)))


def first_frame_psnr(video: np.ndarray, image: np.ndarray) -> float:
    """PSNR of ``video[0]`` against ``image``, resized to the video's frame size where it
    differs (``i2vgen eval`` passes the image already cut as the real frames are)."""
    height, width = video.shape[1:3]
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
    return psnr(video[0], image)


def continuation_psnr(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean PSNR of frames 1..F-1 against the real clip's (frame 0 is ``first_frame_psnr``'s)."""
    if generated.shape != real.shape or len(real) < 2:
        raise ValueError(f"continuation needs two videos of one shape, 2+ frames; got {generated.shape}, {real.shape}")
    return float(np.mean([psnr(g, r) for g, r in zip(generated[1:], real[1:])]))


def freeze_frame_psnr(image_frame: np.ndarray, real: np.ndarray) -> float:
    """``continuation_psnr`` of the input frame repeated: the baseline of no motion at all."""
    return continuation_psnr(np.broadcast_to(image_frame, real.shape), real)


def flicker(video: np.ndarray) -> float:
    """VBench's temporal flickering: the mean absolute difference of consecutive frames, in
    [0, 1] units (grey levels / 255). 0 is a still video; lower is steadier. VBench reports
    ``1 -`` this as a score; the raw difference is kept here so that it reads beside the
    real clip's own change. Real motion raises it too, so read it with the dynamic degree."""
    if len(video) < 2:
        raise ValueError("flicker needs at least two frames")
    return float(np.abs(np.diff(video.astype(np.int16), axis=0)).mean()) / 255.0


def mean_flow_magnitude(video: np.ndarray, fps: float) -> float:
    """Mean Farneback flow length over consecutive frames, in frame diagonals per second
    (curation's motion unit, so curation's static-clip threshold applies unchanged)."""
    if len(video) < 2:
        raise ValueError("flow needs at least two frames")
    return float(np.mean([flow_magnitude(a, b, 1.0 / fps) for a, b in zip(video[:-1], video[1:])]))


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


@torch.no_grad()
def clip_consistency(encoder: torch.nn.Module, generated: np.ndarray, image_frame: np.ndarray) -> float:
    """Mean cosine between the CLIP image embeddings of frames 1..F-1 and of the input frame.

    ``encoder`` is the cascade's CLIP (``encode_image`` takes ``(B, 3, H, W)`` in [-1, 1]).
    Meaningful only with trained CLIP weights: a random encoder's embedding is not a content."""
    device = next(encoder.parameters()).device
    stack = np.concatenate([image_frame[None], generated[1:]])
    pixels = torch.from_numpy(stack).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
    embeddings = torch.nn.functional.normalize(encoder.encode_image(pixels)[:, 0].float(), dim=-1)
    return float((embeddings[1:] @ embeddings[0]).mean())
