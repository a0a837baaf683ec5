"""What a stage's denoiser is conditioned on: one ``Conditioning`` per architecture.

A denoiser owns its conditioning (``model.conditioning``), as a diffusers pipeline owns its
``encode_prompt`` and ``prepare_image_latents``. Training, ``i2vgen encode``, validation, the
cascade and ``model-info`` ask it and never branch on the architecture, so a new
architecture or a new condition is one denoiser and one ``Conditioning`` subclass:

- which frozen CLIP encoders the stage needs (``image_features`` / ``text_features``; the VAE
  encodes every stage's latents);
- what ``i2vgen encode`` stores (``stored``): the latents, plus per grid frame the image
  embedding (a window may start on any frame) and per row the caption's tokens;
- the denoiser's keyword inputs built from pixels and captions, or from stored features
  (``features`` then ``conditions``), and from a request's image and prompt at sampling time
  (``request_conditions``);
- the null condition for condition dropout and guidance: rows whose ``keep_condition`` is
  False lose their condition inside the denoiser; where that null is a prompt's tokens
  (``null_prompt``) the caller passes them as ``null_text``: the empty prompt's in training,
  the negative prompt's when sampling;
- the noise a sample starts from (``start_noise``: the paper's detail encoder puts the image
  latent on frame 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch

from pipeline.diffusion.noising import add_image_to_first_frame
from pipeline.frames import image_to_tensor

if TYPE_CHECKING:
    from pipeline.generation.request import GenerationRequest
    from pipeline.models.vae import ImageAutoencoder

# Encoder outputs of a batch: "image_embeds" (B, 1, D), the first frame's CLIP embedding,
# and "text" (B, L, D), the captions' CLIP tokens.
Features = dict[str, torch.Tensor]
# A denoiser's keyword inputs besides the noisy latents, the timestep and keep_condition.
Conditions = dict[str, torch.Tensor]


class ClipEncoder(Protocol):
    """Both CLIP layouts (open_clip's and transformers')."""

    image_size: int | Sequence[int]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor: ...


@dataclass
class DiffusionBatch:
    """One same-shape batch for the diffusion loss: clean latents ``(B, C, F, h, w)`` and the
    conditions the stage's denoiser takes."""

    latents: torch.Tensor
    conditions: Conditions


class Conditioning(ABC):
    """The base of every architecture's conditioning; the flags say what it reads, the two
    abstract methods build its conditions."""

    image_features: bool = False  # the first frame's CLIP image embedding
    text_features: bool = False  # the caption's CLIP tokens
    null_prompt: bool = False  # dropped text becomes a prompt's tokens (not zeros): needs null_text
    adds_image_to_noise: bool = False  # the image latent sits on frame 0 of the noise
    samples_with_offset_noise: bool = False  # sampling draws the training's offset noise

    @property
    def stored(self) -> tuple[str, ...]:
        """The tensors ``i2vgen encode`` stores per row for this stage."""
        names = ["latents"]
        if self.image_features:
            names.append("image_embeds")
        if self.text_features:
            names.append("text")
        return tuple(names)

    def encode(
        self, clip: ClipEncoder, vae: "ImageAutoencoder", pixels: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, Features]:
        """Latents ``(B, C, F, h, w)`` and features of decoded pixels: what the frozen
        encoders give a trainer that has no stored encodings."""
        return vae.encode_video(pixels), self.features(clip, pixels, captions)

    def from_stored(self, batch: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, Features]:
        """Latents and features of a micro-batch read from ``i2vgen encode``'s table (the
        loader's arrays, one per name)."""
        tensors = {name: torch.from_numpy(np.array(batch[name][0])).to(device) for name in self.stored}
        return tensors.pop("latents"), tensors

    def batch(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, dtype: torch.dtype,
        null_text: Optional[torch.Tensor] = None,
    ) -> DiffusionBatch:
        """A diffusion batch in the compute ``dtype``."""
        latents = latents.to(dtype)
        return DiffusionBatch(latents, self.conditions(latents, features, fps, null_text))

    def features(self, clip: ClipEncoder, pixels: torch.Tensor, captions: Sequence[str]) -> Features:
        """The CLIP features of decoded pixels ``(B, 3, F, H, W)`` in [-1, 1] and their
        captions: what a trainer computes when no stored encodings are given."""
        out: Features = {}
        if self.image_features:
            out["image_embeds"] = clip.encode_image(pixels[:, :, 0])
        if self.text_features:
            out["text"] = clip.encode_text(list(captions))
        return out

    def frame_features(self, clip: ClipEncoder, frames: torch.Tensor) -> Features:
        """Per-frame features of ``(T, 3, H, W)`` pixels that ``i2vgen encode`` stores, so a
        window starting on any grid frame finds its first frame's embedding."""
        return {"image_embeds": clip.encode_image(frames)} if self.image_features else {}

    def caption_features(self, clip: ClipEncoder, caption: str) -> Features:
        """Per-row features of a caption that ``i2vgen encode`` stores."""
        return {"text": clip.encode_text([caption])} if self.text_features else {}

    @abstractmethod
    def conditions(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, null_text: Optional[torch.Tensor] = None
    ) -> Conditions:
        """The denoiser's inputs for clean video latents ``(B, C, F, h, w)`` (in the compute
        dtype), their features and frame rates; ``null_text`` ``(1, L, D)`` where
        ``null_prompt``."""

    @abstractmethod
    def request_conditions(
        self, clip: ClipEncoder, vae: "ImageAutoencoder", requests: Sequence["GenerationRequest"], width: int,
        height: int, null_text: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype,
    ) -> Conditions:
        """The denoiser's inputs for sampling ``requests`` at ``width x height``."""

    def start_noise(self, noise: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """The noise a training sample or a sampled video starts from."""
        return add_image_to_first_frame(noise, conditions["image_latent"]) if self.adds_image_to_noise else noise

    def example_conditions(self, latents: torch.Tensor, width: int, text_tokens: int = 77) -> Conditions:
        """Zero conditions of the right shapes for ``latents``: what ``model-info`` counts
        FLOPs with (on the meta device nothing is allocated)."""
        batch, device = latents.shape[0], latents.device
        features = {"image_embeds": torch.zeros(batch, 1, width, device=device),
                    "text": torch.zeros(batch, text_tokens, width, device=device)}
        fps = torch.full((batch,), 8, dtype=torch.long, device=device)
        null = torch.zeros(1, text_tokens, width, device=device) if self.null_prompt else None
        return self.conditions(latents, features, fps, null)


def request_fps(requests: Sequence["GenerationRequest"], device: torch.device) -> torch.Tensor:
    return torch.tensor([r.fps for r in requests], device=device)


class PaperImageConditioning(Conditioning):
    """The paper's base: the input image's CLIP embedding as the cross-attention context, its
    latent through the global encoder (and with ``model.image_concat`` on every frame's
    input), and on frame 0 of the noise (the detail encoder). Dropped rows get a zero
    context; the image latent stays, like the noise's frame 0, since it is the task's input."""

    image_features = True
    adds_image_to_noise = True
    samples_with_offset_noise = True

    def conditions(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, null_text: Optional[torch.Tensor] = None
    ) -> Conditions:
        return {"context": features["image_embeds"].to(latents.dtype), "fps": fps, "image_latent": latents[:, :, 0]}

    def request_conditions(
        self, clip: ClipEncoder, vae: "ImageAutoencoder", requests: Sequence["GenerationRequest"], width: int,
        height: int, null_text: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype,
    ) -> Conditions:
        # The pixels the training loader makes of the same image: its crop, its resize.
        images = torch.stack([image_to_tensor(r.image, width, height) for r in requests]).to(device)
        return {"context": clip.encode_image(images).to(dtype), "fps": request_fps(requests, device),
                "image_latent": vae.encode(images.to(dtype))}


class PaperTextConditioning(Conditioning):
    """The paper's refiner: the caption's CLIP tokens; dropped rows get a zero context."""

    text_features = True

    def conditions(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, null_text: Optional[torch.Tensor] = None
    ) -> Conditions:
        return {"context": features["text"].to(latents.dtype), "fps": fps}

    def request_conditions(
        self, clip: ClipEncoder, vae: "ImageAutoencoder", requests: Sequence["GenerationRequest"], width: int,
        height: int, null_text: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype,
    ) -> Conditions:
        return {"context": clip.encode_text([r.prompt for r in requests]).to(dtype),
                "fps": request_fps(requests, device)}
