"""Model FLOPs utilisation: the denoiser's training FLOPs per second over the device's peak.

A training step costs three forwards' FLOPs per sample (forward, and a backward of twice
that); recomputation under gradient checkpointing is not counted, as MFU counts the model's
FLOPs, not the hardware's. The forward's FLOPs come from ``pipeline.model_info`` at the
stage's training shape on the meta device, per latent position, so a step of any frame count
and micro-batch size is charged by its tokens (temporal attention, quadratic in the frames,
is a small share). The frozen encoders are not counted.
"""

from __future__ import annotations

from typing import Optional

import torch

from pipeline.config.schema import Config, TrainConfig
from pipeline.model_info import forward_flops, latent_shape
from pipeline.models.build import build_denoiser

# Dense (not sparse) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets (SXM parts).
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def training_flops_per_token(config: Config, stage: str) -> float:
    """Training FLOPs per latent position (frames x h x w) of the stage's denoiser."""
    model = build_denoiser(config, stage, device="meta")
    _, _, frames, height, width = latent_shape(config, stage)
    return 3 * forward_flops(model, config, stage) / (frames * height * width)


def device_peak_flops(train: TrainConfig, device: torch.device) -> Optional[float]:
    """The device's peak FLOP/s: ``train.peak_tflops`` when set, else a known GPU's bf16 peak
    when training in bf16; None (no MFU) on CPUs and unknown devices."""
    if train.peak_tflops > 0:
        return train.peak_tflops * 1e12
    if device.type != "cuda" or not train.bf16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAKS.items() if key in name), None)
