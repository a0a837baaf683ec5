"""The released I2VGen-XL (``model.arch: release``) behind the interface of ``StageDenoiser``.

The published checkpoint is not the paper's cascade: it is one 1280x704 stage whose UNet
(diffusers' ``I2VGenXLUNet``, built here rather than rewritten) takes the image latent
concatenated to the noisy input and 77 text + 64 local-image + 4 global-image context
tokens. Wrapping it in the same call signature as the paper's base lets the DeepSpeed
trainer fine-tune it and the cascade and the Serve endpoint sample it unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config.schema import Config, UNetConfig
from pipeline.models.conditioning import ClipEncoder, Conditioning, Conditions, Features, request_fps

if TYPE_CHECKING:
    from pipeline.generation.request import GenerationRequest
    from pipeline.models.vae import ImageAutoencoder


def release_unet_kwargs(unet: UNetConfig) -> dict[str, Any]:
    """``I2VGenXLUNet`` constructor arguments for a ``UNetConfig``.

    diffusers passes ``attention_head_dim`` on as the blocks' ``num_attention_heads``, which
    they read as the head size: ``head_dim`` maps onto it, so heads = channels / head_dim as
    in VGen. Levels with attention use the cross-attention blocks.
    """
    down = ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in unet.attention_levels]
    up = ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(unet.attention_levels)]
    return dict(
        in_channels=unet.in_channels,
        out_channels=unet.out_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        norm_num_groups=unet.norm_num_groups,
        cross_attention_dim=unet.cross_attention_dim,
        attention_head_dim=unet.head_dim,
    )


def image_latent_frames(image_latent: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, F, h, w)``: the image on frame 0, then constant frames
    ``k / (F - 1)`` that tell the concat branch each frame's position (VGen's ramp)."""
    first = image_latent[:, :, None]
    if frames == 1:
        return first
    ramp = torch.arange(1, frames, device=image_latent.device, dtype=image_latent.dtype) / (frames - 1)
    rest = ramp.view(1, 1, -1, 1, 1).expand(first.shape[0], first.shape[1], -1, *first.shape[-2:])
    return torch.cat([first, rest], dim=2)


def crop_wide(image: np.ndarray, width: int, height: int) -> Image.Image:
    """VGen's ``CenterCropWide``: the centre of the image that, scaled with a box filter,
    just covers ``width x height``. The released model saw its conditions
    prepared this way, so it is how its base stage prepares them here. It is deliberately
    not ``pipeline.frames``' crop-and-resize, which the paper architecture trains and samples
    with: this one must match the published weights, not our training."""
    pil = Image.fromarray(image)
    scale = min(pil.width / width, pil.height / height)
    scaled_w, scaled_h = round(pil.width // scale), round(pil.height // scale)  # VGen's size
    # VGen scales the whole image, then crops. The crop's pixels are the same when only
    # its box is cut from the source and scaled (each output pixel averages the same source
    # span), and a very elongated image then never becomes a huge allocation.
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    # Output pixels inside VGen's scaled image (its floor division can leave it a pixel short
    # of the target, and its crop then pads black there, as here).
    x0, y0 = max(0, -left), max(0, -top)
    x1, y1 = min(width, scaled_w - left), min(height, scaled_h - top)
    sx, sy = pil.width / scaled_w, pil.height / scaled_h
    box = ((left + x0) * sx, (top + y0) * sy, (left + x1) * sx, (top + y1) * sy)
    out = Image.new("RGB", (width, height))
    out.paste(pil.resize((x1 - x0, y1 - y0), Image.Resampling.BOX, box=box), (x0, y0))
    return out


def pil_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` recomputed in the backward pass while training. diffusers' 3D blocks carry
    a ``gradient_checkpointing`` flag that their forward never reads (and ``I2VGenXLUNet``
    refuses to set it), so the release UNet checkpoints here, one block at a time."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class ReleaseConditioning(Conditioning):
    """The released model's conditions: the prompt's CLIP tokens as context, the input
    image's CLIP embedding and its latent (concatenated to every frame). Dropped rows get
    the null prompt's tokens (the empty prompt in training, the negative prompt when
    sampling) and a zero image embedding, as VGen's pipeline does; the image latent and the
    fps stay. The image is prepared as VGen prepares it (``crop_wide``), and sampling starts
    from plain noise, as VGen and diffusers do."""

    image_features = True
    text_features = True
    null_prompt = True

    def conditions(
        self, latents: torch.Tensor, features: Features, fps: torch.Tensor, null_text: Optional[torch.Tensor] = None
    ) -> Conditions:
        if null_text is None:
            raise ValueError("the release model's conditions need null_text, the empty prompt's tokens")
        text = features["text"].to(latents.dtype)
        return {"context": text, "fps": fps, "image_latent": latents[:, :, 0],
                "image_embedding": features["image_embeds"].to(latents.dtype),
                "null_context": null_text.to(latents.dtype).expand(len(text), -1, -1)}

    def request_conditions(
        self, clip: ClipEncoder, vae: "ImageAutoencoder", requests: Sequence["GenerationRequest"], width: int,
        height: int, null_text: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype,
    ) -> Conditions:
        if null_text is None:
            raise ValueError("the release model samples with the negative prompt's tokens as null_text")
        side = clip.image_size if isinstance(clip.image_size, int) else clip.image_size[0]
        images = torch.stack([pil_tensor(crop_wide(r.image, width, height)) for r in requests])
        squares = torch.stack(
            [pil_tensor(crop_wide(r.image, width, width).resize((side, side), Image.Resampling.BILINEAR))
             for r in requests]
        )
        return {
            "context": clip.encode_text([r.prompt for r in requests]).to(dtype),
            "null_context": null_text.to(dtype).expand(len(requests), -1, -1),
            "image_embedding": clip.encode_image(squares.to(device)).to(dtype),
            "fps": request_fps(requests, device),
            "image_latent": vae.encode(images.to(device, dtype)),
        }


class ReleaseDenoiser(nn.Module):
    """``(noisy latents, t, text tokens, fps, image latent, image embedding) -> v``.

    ``context`` is the prompt's CLIP text tokens; ``image_embedding`` ``(B, 1, D)`` the
    input image's CLIP embedding; ``image_latent`` ``(B, C, h, w)`` its VAE latent. Rows
    whose ``keep_condition`` is False get ``null_context`` (the negative prompt's tokens)
    and a zero image embedding: the unconditional branch of the released pipeline, and the
    same path condition dropout trains. The image latent and fps stay in both branches.
    """

    stage = "base"

    def __init__(self, config: Config) -> None:
        super().__init__()
        from diffusers import I2VGenXLUNet

        self.conditioning = ReleaseConditioning()
        self.unet = I2VGenXLUNet(**release_unet_kwargs(config.unet))
        if config.unet.gradient_checkpointing:
            for block in [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]:
                block.forward = _checkpointed(block.forward)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        fps: Optional[torch.Tensor] = None,
        image_latent: Optional[torch.Tensor] = None,
        keep_condition: Optional[torch.Tensor] = None,
        image_embedding: Optional[torch.Tensor] = None,
        null_context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if fps is None or image_latent is None or image_embedding is None:
            raise ValueError("the release model needs fps, image_latent and image_embedding")
        if keep_condition is not None:
            keep = keep_condition.to(device=context.device).view(-1, 1, 1)
            null = torch.zeros_like(context) if null_context is None else null_context.to(context.dtype)
            context = torch.where(keep, context, null)
            image_embedding = image_embedding * keep.to(image_embedding.dtype)
        dtype = sample.dtype
        return self.unet(
            sample,
            torch.as_tensor(timestep, device=sample.device),
            fps=torch.as_tensor(fps, device=sample.device),
            image_latents=image_latent_frames(image_latent.to(dtype), sample.shape[2]),
            image_embeddings=image_embedding.to(dtype),
            encoder_hidden_states=context.to(dtype),
            return_dict=False,
        )[0]
