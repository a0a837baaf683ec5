"""Typed configuration of the whole system, as plain dataclasses.

Every key a YAML file or a ``--set`` override may name is a field here, with its type and a
comment saying what it controls. ``pipeline.config.loader`` turns YAML into these objects and
rejects unknown keys and wrong types with the key's dotted path in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class UNetConfig:
    """The 3D UNet shared by the base and the refiner (the refiner starts from the base)."""

    # Latent channels in and out; must equal the VAE's latent channels.
    in_channels: int = 4
    out_channels: int = 4
    # Channels per resolution level (SD 2.1: 320, 640, 1280, 1280).
    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    # Whether each level has spatial/temporal attention (SD 2.1: all but the lowest resolution).
    attention_levels: list[bool] = field(default_factory=lambda: [True, True, True, False])
    # ResNet blocks per level on the way down (the way up has one more).
    layers_per_block: int = 2
    # Channels per attention head (SD 2.1 uses 64 everywhere).
    head_dim: int = 64
    # Heads of the temporal transformer right after conv_in (ModelScope T2V uses 8).
    conv_in_temporal_heads: int = 8
    norm_num_groups: int = 32
    # Width of the cross-attention context (ViT-H/14's embedding is 1024).
    cross_attention_dim: int = 1024
    # Dropout inside the temporal convolutions (ModelScope T2V uses 0.1).
    temporal_dropout: float = 0.1
    # Add an FPS embedding to the timestep embedding (the paper trains with dynamic FPS).
    use_fps_embedding: bool = True
    # Recompute activations in the backward pass to save memory.
    gradient_checkpointing: bool = False


@dataclass
class GlobalEncoderConfig:
    """The trainable global encoder of the paper's Table 1, over the image's VAE latent."""

    stem_channels: int = 64
    # Side of the adaptive average pool after the stem (32 in the paper).
    pool_size: int = 32
    # Output channels of the stride-2 stages; the pool size halves at each and must end at 2.
    stage_channels: list[int] = field(default_factory=lambda: [256, 512, 512, 1024])


@dataclass
class ClipConfig:
    """The frozen open_clip model: its image tower for the base, its text tower for the refiner."""

    # An open_clip architecture name ("ViT-H-14") or "tiny" (a small random model, no weights).
    arch: str = "ViT-H-14"
    # A local weights file (safetensors, or a torch checkpoint loaded with weights_only=True).
    weights: Optional[str] = None


@dataclass
class VAEConfig:
    """The image autoencoder: SD 2.1's AutoencoderKL, or a weight-free lossless stand-in."""

    kind: Literal["sd", "pixel_unshuffle"] = "sd"
    # Spatial downsampling of the pixel_unshuffle autoencoder (the SD VAE's is fixed at 8).
    factor: int = 8
    # A local weights path for the SD VAE (a diffusers folder or a single file).
    weights: Optional[str] = None


@dataclass
class DiffusionConfig:
    """The noise schedule and the parameterisation the UNet predicts."""

    num_train_timesteps: int = 1000
    # linear_sd: SD's linear-in-sqrt betas (the paper); cosine: the released model's schedule.
    schedule: Literal["linear_sd", "linear", "cosine"] = "linear_sd"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # Rescale the schedule so the last step has zero SNR (the released model does).
    zero_terminal_snr: bool = False
    prediction: Literal["v", "epsilon", "sample"] = "v"
    # Offset noise strength: one extra N(0,1) per (sample, channel, frame), times this.
    offset_noise: float = 0.1


@dataclass
class StageConfig:
    """What differs between the base and the refiner: frame size, timestep range, dropout."""

    width: int
    height: int
    frames: int = 16
    # The stage trains on timesteps in [0, max_timestep) (the refiner: 600).
    max_timestep: int = 1000
    # Probability of dropping the condition in training, for classifier-free guidance.
    condition_dropout: float = 0.1


@dataclass
class StagesConfig:
    base: StageConfig = field(default_factory=lambda: StageConfig(width=448, height=256))
    refiner: StageConfig = field(
        default_factory=lambda: StageConfig(width=1280, height=720, max_timestep=600)
    )


@dataclass
class SamplingConfig:
    """Defaults of generation; every one can be overridden per request."""

    sampler: Literal["ddim", "dpm++"] = "ddim"
    steps: int = 50
    guidance: float = 9.0
    # The refiner re-noises the base video to this step and denoises from there.
    refine_from: int = 600
    fps: int = 8


@dataclass
class Config:
    """The root: one object describes the model, the diffusion process and both stages."""

    preset: str = "paper"
    unet: UNetConfig = field(default_factory=UNetConfig)
    global_encoder: GlobalEncoderConfig = field(default_factory=GlobalEncoderConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
