"""One crop-and-resize for every stage: the base stage samples from exactly the pixels the
training loader gives it for the same image, so sampling sees the training distribution."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from curation.sources import MediaItem
from curation.worker import process_item
from pipeline.generation.cascade import Cascade
from pipeline.generation.request import make_request
from pipeline.frames import centre_crop_box, crop_resize
from pipeline.models.build import build_denoiser
from pipeline.curated_media import stage_crop


def _photo_like(width: int = 333, height: int = 197) -> np.ndarray:
    """Smooth gradients, a sharp-edged block and a one-pixel grid: a bicubic and an
    antialiased bilinear resize of it differ visibly."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (3 * x + 5 * y) % 256], -1).astype(np.uint8)
    image[40:120, 90:200] = (250, 30, 20)
    image[::7, :, 1] = 255
    return image


def test_sampling_sees_the_pixels_training_sees(tmp_path, tiny) -> None:
    image = _photo_like()
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    row = process_item(MediaItem(str(path), "image"), tiny)[0][0]  # curation's row, with its crops
    data = row["image"] if row["image_inline"] is None else row["image_inline"]  # one of them (image_columns)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]  # as MediaSource.image
    stage = tiny.stages.base
    crop, scale = stage_crop(row, "base", "images")
    video = torch.from_numpy(crop_resize(stored, crop, (stage.width, stage.height), scale))
    trained = video.permute(0, 3, 1, 2).float() / 127.5 - 1  # (1, 3, H, W), scaled as the trainer does

    cascade = Cascade(tiny, build_denoiser(tiny, "base"), None)
    seen: list[torch.Tensor] = []
    encode = cascade.vae.encode
    cascade.vae.encode = lambda pixels: seen.append(pixels) or encode(pixels)
    cascade.base_latents([make_request(tiny, image, steps=1)])
    assert torch.equal(seen[0], trained)


def test_centre_crop_box_keeps_the_curated_boxes() -> None:
    """The boxes curation.buckets.centre_crop wrote before the move: stored tables stay valid."""
    cases = {
        (1920, 1080, 448, 256): [15, 0, 1890, 1080],
        (1080, 1920, 1280, 720): [0, 656, 1080, 608],
        (333, 197, 112, 64): [0, 3, 333, 190],
        (640, 480, 448, 256): [0, 57, 640, 366],
        (1280, 720, 1280, 720): [0, 0, 1280, 720],
        (197, 333, 1280, 720): [0, 111, 197, 111],
    }
    for args, box in cases.items():
        assert centre_crop_box(*args) == box, args


def test_crop_resize_of_an_identity_box_is_exact() -> None:
    frames = np.stack([_photo_like(), _photo_like()[::-1]])
    assert np.array_equal(crop_resize(frames, [0, 0, 333, 197], (333, 197)), frames)
    box = [10, 20, 64, 32]
    assert np.array_equal(crop_resize(frames, box, (64, 32)), frames[:, 20:52, 10:74])
