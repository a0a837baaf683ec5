"""One generation request: its parameters, their bounds, and the input image's checks.

The CLI and the HTTP endpoint build requests through ``make_request`` and ``decode_image``,
so both accept and refuse exactly the same inputs, and every refusal names its field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config.schema import Config, ServingConfig
from pipeline.diffusion.samplers import SAMPLERS


class RequestError(ValueError):
    """A parameter out of its bounds (HTTP 422); ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImageError(ValueError):
    """The upload is not a decodable image (HTTP 400)."""


class TooLargeError(ValueError):
    """The upload has too many bytes or pixels (HTTP 413)."""


@dataclass
class GenerationRequest:
    """Everything one video depends on: the same request (and seed) gives the same video."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    prompt: str
    frames: int
    fps: int
    steps: int
    guidance: float
    sampler: str
    seed: int
    refine_from: int

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys run as one batch: one sampler loop over the same steps
        and frame count. Prompts, guidance, fps and seeds may differ row by row."""
        return (self.frames, self.sampler, self.steps, self.refine_from)


# Formats an upload may be: what Pillow would otherwise also open includes EPS (which runs
# Ghostscript), PSD, TIFF and dozens more decoders no caller needs.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(data: bytes, limits: ServingConfig, max_bytes: Optional[int] = None) -> np.ndarray:
    """RGB pixels of an uploaded image. Its bytes, format, sides, aspect ratio and pixel
    count are checked on the header, before any pixel is decoded: a small file can claim a
    huge image (a decompression bomb), and a very thin one turns into a huge allocation
    once it is scaled to cover the model's frame."""
    max_bytes = limits.max_upload_bytes if max_bytes is None else max_bytes
    if len(data) > max_bytes:
        raise TooLargeError(f"image: {len(data)} bytes is over the limit of {max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:  # Pillow's own bound, before ours
        raise TooLargeError(f"image: {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"image: not a decodable image; PNG, JPEG and WebP are read ({err})") from err
    width, height = image.size
    if max(width, height) > limits.max_image_side:
        raise TooLargeError(f"image: {width}x{height} has a side over the limit of {limits.max_image_side}")
    if width * height > limits.max_image_pixels:
        raise TooLargeError(f"image: {width}x{height} pixels is over the limit of {limits.max_image_pixels}")
    if max(width, height) > limits.max_aspect_ratio * max(1, min(width, height)):
        raise TooLargeError(f"image: {width}x{height} is more elongated than the limit of "
                            f"{limits.max_aspect_ratio:g}:1 (serving.max_aspect_ratio)")
    try:
        return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # a valid header over damaged data
        raise ImageError(f"image: not a decodable image ({type(err).__name__}: {err})") from err


def make_request(
    config: Config,
    image: np.ndarray,
    prompt: Optional[str] = None,
    frames: Optional[int] = None,
    fps: Optional[int] = None,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    sampler: Optional[str] = None,
    seed: Optional[int] = None,
    refine_from: Optional[int] = None,
) -> GenerationRequest:
    """A validated request; parameters left out take the config's sampling defaults."""
    defaults, limits = config.sampling, config.serving
    request = GenerationRequest(
        image=image,
        prompt=prompt or "",
        frames=config.stages.base.frames if frames is None else frames,
        fps=defaults.fps if fps is None else fps,
        steps=defaults.steps if steps is None else steps,
        guidance=defaults.guidance if guidance is None else guidance,
        sampler=defaults.sampler if sampler is None else sampler,
        seed=0 if seed is None else seed,
        refine_from=defaults.refine_from if refine_from is None else refine_from,
    )
    _check_range("frames", request.frames, 1, limits.max_frames)
    _check_range("fps", request.fps, 1, 60)
    _check_range("steps", request.steps, 1, min(limits.max_steps, config.diffusion.num_train_timesteps))
    _check_range("guidance", request.guidance, 1.0, limits.max_guidance)
    _check_range("seed", request.seed, 0, 2**63 - 1)
    _check_range("refine_from", request.refine_from, 1, config.diffusion.num_train_timesteps)
    if request.sampler not in SAMPLERS:
        raise RequestError("sampler", f"{request.sampler!r} is not one of {sorted(SAMPLERS)}")
    if len(request.prompt) > limits.max_prompt_chars:
        raise RequestError("prompt", f"{len(request.prompt)} characters is over the limit of {limits.max_prompt_chars}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RequestError("image", f"expected (H, W, 3) uint8 RGB pixels, got {image.dtype} {image.shape}")
    return request


def _check_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(field, f"{value} is outside [{low}, {high}]")
