"""The paper's cascade: the base samples a 448x256 video from the image, the refiner
re-noises it at 1280x720 to step T_r and denoises it with the text.

Both stages take a list of requests and run those whose ``batch_key`` agrees as one batch
(one sampler loop; conditions, guidance, fps and seeds row by row). Noise is drawn per
request from its own seeded CPU generator, so a request gives the same video alone, in a
batch, and on any device. Between the stages a video is uint8 frames, as it is on the wire
between the two Serve deployments, so the CLI and the endpoint produce the same video.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.generation.request import GenerationRequest
from pipeline.config.schema import Config
from pipeline.diffusion.guidance import guided
from pipeline.diffusion.noising import renoise, sample_noise
from pipeline.diffusion.samplers import SAMPLERS, Denoise, sampling_timesteps
from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.models.build import ClipEncoders, Denoiser, build_autoencoder, build_clip
from pipeline.models.stage_file import load_stage
from pipeline.models.vae import ImageAutoencoder

# on_step(stage, rows, steps done, steps in all) after every model evaluation of a batch;
# rows are the indices, in the caller's request list, of the requests in that batch.
OnStep = Callable[[str, list[int], int, int], None]
StepCounter = Callable[[str, int, int], None]

Video = np.ndarray  # (F, H, W, 3) uint8 RGB


def group_by_key(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indices of the requests that can share one batch, in order of first appearance."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[request.batch_key].append(i)
    return list(groups.values())


def refiner_steps(steps: int, refine_from: int, num_train_timesteps: int) -> int:
    """The refiner covers ``[0, T_r)`` at the base's step spacing: 50 base steps over 1000
    become 30 refiner steps over 600."""
    return max(1, round(steps * refine_from / num_train_timesteps))


def refiner_seed(seed: int) -> int:
    """The refiner's noise stream, distinct from the base's for the same request seed."""
    return (seed * 1_000_003 + 1) % 2**63


def to_frames(pixels: torch.Tensor) -> list[Video]:
    """``(B, 3, F, H, W)`` in [-1, 1] -> one uint8 ``(F, H, W, 3)`` array per row."""
    scaled = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(scaled.permute(0, 2, 3, 4, 1).cpu().numpy())


def from_frames(videos: Sequence[Video]) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` arrays -> ``(B, 3, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def resize_video(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(B, 3, F, h, w)`` -> ``(B, 3, F, height, width)``, bilinear, frame by frame."""
    batch, channels, frames = pixels.shape[:3]
    flat = pixels.transpose(1, 2).flatten(0, 1)
    out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return out.view(batch, frames, channels, height, width).transpose(1, 2)


class Cascade:
    """The frozen encoders plus the base and/or the refiner, ready to sample.

    A Serve deployment holds one stage (``base`` or ``refiner`` is None); the CLI both.
    """

    def __init__(
        self,
        config: Config,
        base: Optional[Denoiser],
        refiner: Optional[Denoiser],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        clip: Optional[ClipEncoders] = None,
        vae: Optional[ImageAutoencoder] = None,
    ) -> None:
        """``clip`` and ``vae`` reuse encoders a caller already holds (a trainer's), where
        ``vae`` must already be in ``dtype``; otherwise they are built from ``config``."""
        if base is None and refiner is None:
            raise ValueError("a cascade needs the base, the refiner or both")
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.base = None if base is None else base.to(self.device, dtype).eval()
        self.refiner = None if refiner is None else refiner.to(self.device, dtype).eval()
        self.clip = clip or build_clip(config.clip, self.device)  # fp32: its input normalisation is fp32
        self.vae = vae or build_autoencoder(config.vae, self.device).to(dtype).eval()
        self.noise_schedule = NoiseSchedule(config.diffusion)
        # Where the null condition is a prompt's tokens, it is the negative prompt, fixed by
        # the config: its tokens are encoded once, not per batch.
        self.negative_text = (
            self.clip.encode_text([config.sampling.negative_prompt]).to(dtype)
            if any(m is not None and m.conditioning.null_prompt for m in (self.base, self.refiner)) else None
        )

    @classmethod
    def from_files(
        cls,
        config: Config,
        base: Optional[str | Path] = None,
        refiner: Optional[str | Path] = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "Cascade":
        """Load exported stage files (``i2vgen export``), checked against ``config``."""
        return cls(
            config,
            None if base is None else load_stage(base, "base", config, source=f"--base {base}"),
            None if refiner is None else load_stage(refiner, "refiner", config, source=f"--refiner {refiner}"),
            device,
            dtype,
        )

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], on_step: Optional[OnStep] = None) -> list[Video]:
        """Base videos, refined when this cascade has a refiner."""
        videos = self.run_base(requests, on_step)
        return self.run_refiner(videos, requests, on_step) if self.refiner is not None else videos

    @torch.no_grad()
    def run_base(self, requests: Sequence[GenerationRequest], on_step: Optional[OnStep] = None) -> list[Video]:
        return self._per_group(
            requests, lambda idx, counter: self._base_batch([requests[i] for i in idx], counter), on_step
        )

    @torch.no_grad()
    def run_refiner(
        self, videos: Sequence[Video], requests: Sequence[GenerationRequest], on_step: Optional[OnStep] = None
    ) -> list[Video]:
        return self._per_group(
            requests,
            lambda idx, counter: self._refiner_batch([videos[i] for i in idx], [requests[i] for i in idx], counter),
            on_step,
        )

    @staticmethod
    def _per_group(
        requests: Sequence[GenerationRequest],
        run: Callable[[list[int], Optional[StepCounter]], list[Video]],
        on_step: Optional[OnStep],
    ) -> list[Video]:
        out: list[Optional[Video]] = [None] * len(requests)
        for indices in group_by_key(requests):
            counter = None if on_step is None else (lambda stage, done, total, rows=indices: on_step(stage, rows, done, total))
            for i, video in zip(indices, run(indices, counter)):
                out[i] = video
        return out  # type: ignore[return-value]

    def _base_batch(self, requests: list[GenerationRequest], on_step: Optional[StepCounter]) -> list[Video]:
        latents = self.base_latents(requests, on_step)
        return to_frames(self.vae.decode_video(latents, self.config.sampling.decode_chunk))

    @torch.no_grad()
    def base_latents(self, requests: list[GenerationRequest], on_step: Optional[StepCounter] = None) -> torch.Tensor:
        """The base stage's sampled latents ``(B, C, F, h, w)`` for one batch of requests
        that share a ``batch_key`` (what parity checks against other implementations read)."""
        if self.base is None:
            raise RuntimeError("this cascade has no base stage")
        first, sampling, stage = requests[0], self.config.sampling, self.config.stages.base
        conditioning = self.base.conditioning
        conditions = conditioning.request_conditions(
            self.clip, self.vae, requests, stage.width, stage.height, self.negative_text, self.device, self.dtype
        )
        factor = self.config.vae.factor
        shape = (1, self.vae.latent_channels, first.frames, stage.height // factor, stage.width // factor)
        offset = self.config.diffusion.offset_noise if conditioning.samples_with_offset_noise else 0.0
        noise = torch.cat(
            [sample_noise(shape, offset, torch.Generator().manual_seed(r.seed)) for r in requests]
        ).to(self.device, self.dtype)
        # The paper's detail encoder: sampling starts from noise that holds the image on frame 0.
        x = conditioning.start_noise(noise, conditions)
        denoise = guided(self.base, conditions, torch.tensor([r.guidance for r in requests]))
        timesteps = sampling_timesteps(
            first.steps, self.noise_schedule.num_train_timesteps, sampling.spacing, sampling.steps_offset
        )
        return self._sample(first.sampler, denoise, x, timesteps, "base", on_step)

    def _refiner_batch(
        self, videos: list[Video], requests: list[GenerationRequest], on_step: Optional[StepCounter]
    ) -> list[Video]:
        if self.refiner is None:
            raise RuntimeError("this cascade has no refiner stage")
        stage, first = self.config.stages.refiner, requests[0]
        pixels = resize_video(from_frames(videos), stage.width, stage.height).to(self.device, self.dtype)
        latents = self.vae.encode_video(pixels, self.config.sampling.decode_chunk)
        num_steps = refiner_steps(first.steps, first.refine_from, self.noise_schedule.num_train_timesteps)
        timesteps = sampling_timesteps(num_steps, first.refine_from)
        # SDEdit: each base video's latent taken back to step T_r - 1, the refiner's first step.
        x = torch.cat(
            [
                renoise(self.noise_schedule, latents[i : i + 1], timesteps[0], torch.Generator().manual_seed(refiner_seed(r.seed)))
                for i, r in enumerate(requests)
            ]
        )
        conditions = self.refiner.conditioning.request_conditions(
            self.clip, self.vae, requests, stage.width, stage.height, self.negative_text, self.device, self.dtype
        )
        denoise = guided(self.refiner, conditions, torch.tensor([r.guidance for r in requests]))
        refined = self._sample(first.sampler, denoise, x, timesteps, "refiner", on_step)
        return to_frames(self.vae.decode_video(refined, self.config.sampling.decode_chunk))

    def _sample(
        self, sampler: str, denoise: Denoise, x: torch.Tensor, timesteps: list[int], stage: str,
        on_step: Optional[StepCounter],
    ) -> torch.Tensor:
        done = 0

        def counted(x_t: torch.Tensor, t: int) -> torch.Tensor:
            nonlocal done
            out = denoise(x_t, t)
            done += 1
            if on_step is not None:
                on_step(stage, done, len(timesteps))
            return out

        return SAMPLERS[sampler](self.noise_schedule, counted, x, timesteps)
