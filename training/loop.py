"""``train_loop_per_worker``: what each Ray Train worker runs, read top to bottom.

Build the stage's denoiser and a DeepSpeed engine around it (frozen CLIP and VAE stay
outside), restore the last checkpoint if Ray hands one over, then for each micro-batch of
this worker's dataset shard: encode, diffusion loss, backward, step, EMA. A fresh run first
exports its step-0 weights; every ``validate_every`` steps all ranks validate on held-out
clips (``training.validation``); every ``checkpoint_every`` steps all ranks save their
DeepSpeed shards and report them together.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.config.schema import Config
from pipeline.diffusion.schedule import NoiseSchedule
from pipeline.models.build import ClipEncoders, Denoiser, build_autoencoder, build_clip, build_denoiser
from pipeline.models.init_weights import initialise
from pipeline.models.release_denoiser import ReleaseDenoiser
from pipeline.models.stage_file import save_stage
from pipeline.models.vae import ImageAutoencoder
from training.checkpointing import TrainState, restore, save_and_report
from training.data import rank_dataset_name
from training.encodings import Encodings
from training.losses import DiffusionBatch, diffusion_loss
from training.optim import EMA, build_optimizer, group_rates
from training.validation import ValidationLosses, Validator

# The weights the run started from, exported like a trained stage (the untrained baseline).
INITIAL_WEIGHTS = "initial.safetensors"


def deepspeed_config(config: Config, use_bf16: bool) -> dict[str, Any]:
    train = config.train
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage, "contiguous_gradients": True, "overlap_comm": False},
        "bf16": {"enabled": use_bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


@dataclass
class EncoderOutputs:
    """What the frozen encoders give for a micro-batch, computed on the trainer or read back
    from ``i2vgen encode``'s table: latents ``(B, C, F, h, w)``, the first frame's CLIP
    image embedding ``(B, 1, D)`` (base) and the captions' tokens ``(B, L, D)`` (refiner and
    the released base)."""

    latents: torch.Tensor
    image_embeds: Optional[torch.Tensor] = None
    text: Optional[torch.Tensor] = None

    @classmethod
    def from_stored(cls, batch: dict[str, Any], device: torch.device) -> "EncoderOutputs":
        def tensor(name: str) -> Optional[torch.Tensor]:
            return torch.from_numpy(np.array(batch[name][0])).to(device) if name in batch else None

        return cls(tensor("latents"), tensor("image_embeds"), tensor("text"))


def encode_media(
    model: Denoiser, clip: ClipEncoders, vae: ImageAutoencoder, pixels: torch.Tensor, captions: list[str]
) -> EncoderOutputs:
    """Run the frozen encoders on decoded pixels ``(B, 3, F, H, W)`` in [-1, 1], for what
    this stage's denoiser reads."""
    return EncoderOutputs(
        vae.encode_video(pixels),
        clip.encode_image(pixels[:, :, 0]) if model.stage == "base" else None,
        clip.encode_text(captions) if model.text_conditioned else None,
    )


def diffusion_batch(
    model: Denoiser, encoded: EncoderOutputs, fps: torch.Tensor, dtype: torch.dtype,
    null_text: Optional[torch.Tensor] = None,
) -> DiffusionBatch:
    """What this stage's denoiser is conditioned on. The paper's base sees the first frame
    (CLIP embedding and latent), the refiner the captions, the released model both, plus
    ``null_text`` (the empty prompt's tokens ``(1, L, D)``, encoded once per run) for
    condition dropout."""
    latents = encoded.latents.to(dtype)
    image_latent = latents[:, :, 0] if model.stage == "base" else None
    if not model.text_conditioned:
        return DiffusionBatch(latents, encoded.image_embeds.to(dtype), fps, image_latent)
    text = encoded.text.to(dtype)
    if model.stage != "base":
        return DiffusionBatch(latents, text, fps)
    return DiffusionBatch(
        latents, text, fps, image_latent,
        image_embedding=encoded.image_embeds.to(dtype),
        null_context=null_text.to(dtype).expand(len(text), -1, -1),
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import deepspeed
    import ray.train

    config: Config = loop_config["config"]
    stage: str = loop_config["stage"]
    run_dir = Path(loop_config["run_dir"])
    train = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    use_bf16 = train.bf16 and device.type == "cuda"
    state = TrainState.fresh(train.seed, rank, device)

    model = build_denoiser(config, stage)
    if loop_config.get("init"):
        loaded = initialise(model, loop_config["init"])
        if rank == 0:
            print(loaded, flush=True)
    optimizer, schedule = build_optimizer(model, train)
    engine, optimizer, _, schedule = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(config, use_bf16)
    )
    ema = EMA(engine.module, train.ema_decay, zero3=train.zero_stage == 3, master_weights=use_bf16)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        restore(checkpoint, engine, ema, state, rank)
        if rank == 0:
            print(f"resuming from step {state.step}", flush=True)
    step = state.step

    stored: Optional[Encodings] = loop_config.get("encodings")
    if stored is None or train.validate_every:  # the frozen encoders run here, outside the engine
        clip = build_clip(config, device=device)
        vae = build_autoencoder(config, device=device).to(device)
    if stored is None:
        # The released model drops its text to the empty prompt: the same tokens every step.
        null_text = clip.encode_text([""]) if isinstance(model, ReleaseDenoiser) else None
    elif isinstance(model, ReleaseDenoiser):
        null_text = torch.from_numpy(stored.null_text).to(device)
    else:
        null_text = None
    schedule_noise = NoiseSchedule(config.diffusion)
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    log = RunLog(run_dir, step) if rank == 0 else None
    validator = (Validator(config, stage, loop_config["data_dir"], clip, vae, null_text, device, dtype)
                 if train.validate_every else None)
    if step == 0:
        # The run's own starting point: the baseline a trained stage must beat.
        initial = ema.state_dict(engine.module)  # every rank: a gather under ZeRO-3
        if rank == 0:
            save_stage(initial, run_dir / INITIAL_WEIGHTS, stage, config, step=0)
        if validator is not None:
            _validate(validator, engine, 0, log)

    shard = ray.train.get_dataset_shard(rank_dataset_name(rank))  # this rank's micro-batches, from this step on
    last_good: dict[str, Any] | None = None
    corrupt_samples = corrupt_batches = 0
    waited = computed = 0.0
    window_steps = 0
    t_wait = time.perf_counter()
    for batch in shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        t_start = time.perf_counter()
        index = int(batch["index"][0])  # the plan's micro-batch number: step * workers + rank
        waited += t_start - t_wait
        corrupt_samples += int(batch["corrupt"][0])
        if len(batch["latents" if stored else "video"][0]) == 0:
            corrupt_batches += 1
            if last_good is None:
                raise RuntimeError("the first micro-batch had no decodable sample; check the curated media")
            batch = last_good  # every rank must step together, so train on the last good batch again
        last_good = batch
        with torch.no_grad():
            if stored:
                encoded = EncoderOutputs.from_stored(batch, device)
            else:
                video = torch.from_numpy(np.array(batch["video"][0])).to(device)
                pixels = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
                encoded = encode_media(model, clip, vae, pixels, str(batch["caption"][0]).split("\x1f"))
        samples, frames = encoded.latents.shape[0], encoded.latents.shape[2]
        fps = torch.full((samples,), int(batch["fps"][0]), device=device)
        data = diffusion_batch(model, encoded, fps, dtype, null_text)
        loss, timesteps = diffusion_loss(engine, schedule_noise, data, config, state.generator)
        engine.backward(loss)
        gradient_mb = gradient_bytes(engine, optimizer) / 2**20  # before the step frees them
        engine.step()
        ema.update(engine.module, step)
        step = state.step = step + 1
        window_steps += 1
        computed += time.perf_counter() - t_start
        metrics = {
            "step": step,
            "loss": float(loss.item()),
            **group_rates(optimizer),
            "samples_per_s": samples * world * window_steps / max(computed + waited, 1e-9),
            "data_wait_share": waited / max(waited + computed, 1e-9),
            "frames": int(frames),
            "batch_index": index,
            "pre_encoded": int(stored is not None),
            "max_timestep": int(timesteps.max()),
            "corrupt_samples": corrupt_samples,
            "corrupt_batches": corrupt_batches,
            "optimizer_state_mb": optimizer_state_bytes(optimizer) / 2**20,
            "parameters_mb": parameter_bytes(engine) / 2**20,
            "gradients_mb": gradient_mb,
            "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if log is not None:
            log.step(metrics)
        if validator is not None and (step % train.validate_every == 0 or step >= train.max_steps):
            _validate(validator, engine, step, log)
        if step % train.checkpoint_every == 0 or step >= train.max_steps:
            save_and_report(engine, ema, state, metrics, rank)
            waited = computed = 0.0
            window_steps = 0
        elif step % train.log_every == 0:
            ray.train.report(metrics)
        t_wait = time.perf_counter()
        if step >= train.max_steps:
            break
    if step < train.max_steps:
        raise RuntimeError(f"the data plan ran out at step {step} of {train.max_steps}")


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of optimizer state this rank holds (ZeRO partitions it: it shrinks with the stage)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(_nbytes(v) for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def parameter_bytes(engine) -> int:
    """Bytes of model parameters this rank holds between steps: its partition under ZeRO-3
    (``ds_tensor``; the full tensors exist only while a layer runs), all of them below."""
    return sum(_nbytes(getattr(p, "ds_tensor", p)) for p in engine.module.parameters())


def gradient_bytes(engine, optimizer) -> int:
    """Bytes of gradients this rank holds once ``backward`` returns: full ``.grad`` tensors
    not yet reduced, plus the reduced partitions DeepSpeed keeps for the step
    (``averaged_gradients``, a DeepSpeed internal of its ZeRO optimizers, read defensively)."""
    held = [p.grad for p in engine.module.parameters() if p.grad is not None]
    partitions = getattr(optimizer, "averaged_gradients", None) or {}
    for group in partitions.values() if isinstance(partitions, dict) else partitions:
        held += [g for g in (group if isinstance(group, (list, tuple)) else [group]) if isinstance(g, torch.Tensor)]
    return sum(_nbytes(t) for t in held)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _validate(validator: Validator, engine, step: int, log: Optional["RunLog"]) -> None:
    """Validation losses and sample videos at ``step``; every rank computes, rank 0 writes."""
    losses = validator.losses(engine)
    videos = validator.samples(engine)
    if log is not None:
        log.validation(step, losses, videos, validator.config.sampling.fps)


class RunLog:
    """Rank 0's record of the run: a JSON line per step (validation lines carry
    ``"kind": "validation"``), TensorBoard scalars and sample sheets, sample mp4s under
    ``samples/step_NNNNNN/``, and a progress line.

    A run resumed at ``step`` redoes every step after its checkpoint, so the lines and
    TensorBoard events written after it by the stopped attempt are dropped first: each step
    is recorded once, whatever number of resumes."""

    def __init__(self, run_dir: Path, step: int) -> None:
        from tensorboardX import SummaryWriter

        self.run_dir = run_dir
        path = run_dir / "metrics.jsonl"
        kept = [line for line in _lines(path) if step > 0 and json.loads(line)["step"] <= step]
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in kept))
        os.replace(partial, path)
        self.board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else 0)
        self.lines = open(path, "a", buffering=1)

    def _record(self, metrics: dict[str, Any]) -> None:
        self.lines.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self.board.add_scalar(key, value, metrics["step"])

    def step(self, metrics: dict[str, Any]) -> None:
        self._record(metrics)
        print(
            f"step {metrics['step']}: loss {metrics['loss']:.4f}, lr {metrics['lr_temporal']:.2e} / "
            f"{metrics['lr_spatial']:.2e}, {metrics['samples_per_s']:.2f} samples/s, "
            f"waiting {100 * metrics['data_wait_share']:.0f}%",
            flush=True,
        )

    def validation(self, step: int, losses: ValidationLosses, videos: list[tuple[str, np.ndarray]], fps: int) -> None:
        from inference.video_files import contact_sheet, write_outputs

        self._record({"step": step, "kind": "validation", "validation_loss": losses.validation_loss,
                      "zero_prediction_loss": losses.zero_prediction_loss, "validation_ratio": losses.ratio})
        folder = self.run_dir / "samples" / f"step_{step:06d}"
        for clip_id, video in videos:
            name = _file_name(clip_id)
            write_outputs(video, fps, folder / f"{name}.mp4", sheet=folder / f"{name}.png")
            self.board.add_image(f"samples/{name}", np.asarray(contact_sheet(video)), step, dataformats="HWC")
        print(
            f"validation at step {step}: loss {losses.validation_loss:.4f} against {losses.zero_prediction_loss:.4f} "
            f"for a zero prediction ({losses.ratio:.2f}x)",
            flush=True,
        )


def _lines(path: Path) -> list[str]:
    """The whole JSON lines of ``path``; a line cut off by a crash is dropped."""
    if not path.exists():
        return []
    whole = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        whole.append(line)
    return whole


def _file_name(clip_id: str) -> str:
    """A clip id as a safe file name (ids hold the source's name, which may hold anything)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(clip_id))[:120] or "clip"
