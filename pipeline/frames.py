"""The one crop-and-resize every stage uses: curation's crop boxes, the training loader and
``i2vgen encode``'s frames, and inference's input image.

A model trained on frames resampled one way and sampled from an image resampled another
sees a shifted input distribution, so the box arithmetic and the resampling filter live
here once (torch bilinear with antialiasing) and nowhere else. The released model's own
preprocessing (``pipeline.models.release_denoiser.crop_wide``) is the exception: it must match the
published weights, not our training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def centre_crop_box(width: int, height: int, target_width: int, target_height: int) -> list[int]:
    """The largest centred ``[x, y, w, h]`` box of the target's aspect ratio inside a
    ``width x height`` frame."""
    target = target_width / target_height
    if width / height > target:
        w, h = int(round(height * target)), height
    else:
        w, h = width, int(round(width / target))
    return [(width - w) // 2, (height - h) // 2, w, h]


def crop_resize(frames: np.ndarray, box: list[int], size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Cut ``box`` ``[x, y, w, h]`` out of uint8 ``(N, H, W, 3)`` frames and resize them to
    ``size`` (width, height): uint8 ``(N, height, width, 3)``.

    The box is in source pixels; ``scale`` maps it onto the frames given (a clip is stored
    smaller than its source). Torch bilinear with antialiasing, so a downscale averages
    rather than aliases. Torch is imported here, not at module level, so curation's
    workers (which only need the boxes) do not load it."""
    import torch
    import torch.nn.functional as F

    x, y, w, h = (int(round(v * scale)) for v in box)
    # A contiguous, writable copy: decoded images are read-only arrays, which torch warns on.
    cropped = torch.from_numpy(np.array(frames[:, y : y + h, x : x + w])).permute(0, 3, 1, 2).float()
    resized = F.interpolate(cropped, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def image_to_tensor(image: np.ndarray, width: int, height: int) -> "torch.Tensor":
    """A uint8 ``(H, W, 3)`` image as ``(3, height, width)`` floats in [-1, 1]: the pixels the
    training loader makes of the same image (its curated centre crop, the same resize),
    scaled as the trainer scales them."""
    import torch

    box = centre_crop_box(image.shape[1], image.shape[0], width, height)
    pixels = crop_resize(image[None], box, (width, height))[0]
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
