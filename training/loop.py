"""``train_loop_per_worker``: what each Ray Train worker runs, read top to bottom.

``build`` makes the stage's denoiser and a DeepSpeed engine around it (frozen CLIP and VAE
stay outside), the fp32 EMA, and restores the last checkpoint if Ray hands one over
(``training.checkpointing``: weights, EMA and each rank's random state, so a resume is
exact). Then for each micro-batch of this worker's plan (``micro_batches``): ``train_step``
(encode, diffusion loss, backward, step, EMA), and on their intervals the log
(``log_metrics``: the only host sync, once per ``log_every`` steps), the validation on
held-out clips (``training.validation``) and the checkpoint, which all ranks save and report
together. A fresh run first exports its step-0 weights, the baseline a trained stage must
beat.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from pipeline.config.schema import Config, TrainConfig
from pipeline.diffusion.noise_schedule import NoiseSchedule
from pipeline.models.build import ClipEncoders, Denoiser, build_autoencoder, build_clip, build_denoiser
from pipeline.models.init_weights import initialise
from pipeline.models.stage_file import save_stage
from pipeline.models.vae import ImageAutoencoder
from training.checkpointing import TrainState, restore, save_and_report
from training.data import rank_dataset_name
from training.encodings import Encodings
from training.losses import diffusion_loss
from training.mfu import device_peak_flops, training_flops_per_token
from training.optim import EMA, build_optimizer, group_rates
from training.validation import ValidationLosses, Validator

METRICS_FILE = "metrics.jsonl"
# The weights the run started from, exported like a trained stage (the untrained baseline).
INITIAL_WEIGHTS = "initial.safetensors"


def deepspeed_config(train: TrainConfig, use_bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {
            "stage": train.zero_stage, "contiguous_gradients": True, "overlap_comm": train.overlap_comm,
            "reduce_bucket_size": train.bucket_elements, "allgather_bucket_size": train.bucket_elements,
        },
        "bf16": {"enabled": use_bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


@dataclass
class Worker:
    """What a worker builds once (``build``): the engine around the stage's denoiser, the
    EMA, the frozen encoders where they run here, the run's state, its log and validator."""

    config: Config
    stage: str
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    model: Denoiser
    engine: Any
    optimizer: Any
    ema: EMA
    state: TrainState
    noise_schedule: NoiseSchedule
    stored: Optional[Encodings]
    clip: Optional[ClipEncoders]
    vae: Optional[ImageAutoencoder]
    null_text: Optional[torch.Tensor]
    log: Optional["RunLog"]
    validator: Optional[Validator]
    flops_per_token: float  # the denoiser's training FLOPs per latent position (training.mfu)
    peak_flops: Optional[float]  # the device's, when known: MFU is logged


def build(loop_config: dict[str, Any]) -> Worker:
    import deepspeed
    import ray.train

    config: Config = loop_config["config"]
    stage: str = loop_config["stage"]
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
    optimizer, lr_scheduler = build_optimizer(model, train, fused=train.fused_adamw and device.type == "cuda")
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=deepspeed_config(train, use_bf16)
    )
    ema = EMA(engine.module, train.ema_decay, zero3=train.zero_stage == 3, master_weights=use_bf16)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        restore(checkpoint, engine, ema, state, rank)
        if rank == 0:
            print(f"resuming from step {state.step}", flush=True)

    stored: Optional[Encodings] = loop_config.get("encodings")
    clip = vae = None
    if stored is None or train.validate_every:  # the frozen encoders run here, outside the engine
        clip = build_clip(config.clip, device=device)
        vae = build_autoencoder(config.vae, device=device).to(device)
    # Where dropped text becomes the empty prompt's tokens: the same tokens every step.
    if not model.conditioning.null_prompt:
        null_text = None
    elif stored is None:
        null_text = clip.encode_text([""])
    else:
        null_text = torch.from_numpy(stored.null_text).to(device)
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    run_dir = Path(loop_config["run_dir"])
    validator = (Validator(config, stage, loop_config["data_dir"], clip, vae, null_text, device, dtype)
                 if train.validate_every else None)
    return Worker(config, stage, rank, world, device, dtype, model, engine, optimizer, ema, state,
                  NoiseSchedule(config.diffusion), stored, clip, vae, null_text,
                  RunLog(run_dir, state.step) if rank == 0 else None, validator,
                  training_flops_per_token(config, stage), device_peak_flops(train, device))


@dataclass
class MicroBatch:
    """One step's input as the plan and the loader gave it."""

    batch: dict[str, Any]
    index: int  # the plan's micro-batch number: step * workers + rank
    corrupt_samples: int  # samples the loader replaced by spares
    empty: bool  # every spare failed too: the last good batch stands in
    waited_s: float  # time spent waiting for it


def micro_batches(worker: Worker) -> Iterator[MicroBatch]:
    """This rank's micro-batches from the resumed step on. A batch the loader could not
    fill is replaced by the last good one, since every rank must step together."""
    import ray.train

    shard = ray.train.get_dataset_shard(rank_dataset_name(worker.rank))
    last_good: Optional[dict[str, Any]] = None
    asked = time.perf_counter()
    for batch in shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        waited = time.perf_counter() - asked
        empty = len(batch["latents" if worker.stored else "video"][0]) == 0
        if empty and last_good is None:
            raise RuntimeError("the first micro-batch had no decodable sample; check the curated media")
        item = MicroBatch(last_good if empty else batch, int(batch["index"][0]), int(batch["corrupt"][0]), empty,
                          waited)
        last_good = item.batch
        yield item
        asked = time.perf_counter()


@dataclass
class StepOutput:
    """What a step leaves for the metrics: tensors stay on the device until a log step."""

    loss: torch.Tensor
    max_timestep: torch.Tensor
    samples: int
    tokens: int  # latent positions (frames x height x width) in the micro-batch
    frames: int
    gradients_mb: Optional[float]  # measured on log steps only (a walk over all parameters)


def train_step(worker: Worker, item: MicroBatch, measure: bool) -> StepOutput:
    """Encode (or read the stored encodings), the diffusion loss, backward, the optimizer
    step and the EMA update."""
    train, batch, conditioning = worker.config.train, item.batch, worker.model.conditioning
    with torch.no_grad():
        if worker.stored:
            latents, features = conditioning.from_stored(batch, worker.device)
        else:
            video = torch.from_numpy(np.array(batch["video"][0])).to(worker.device)
            pixels = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
            latents, features = conditioning.encode(worker.clip, worker.vae, pixels,
                                                    str(batch["caption"][0]).split("\x1f"))
    samples, _, frames, height, width = latents.shape
    fps = torch.full((samples,), int(batch["fps"][0]), device=worker.device)
    data = conditioning.batch(latents, features, fps, worker.dtype, worker.null_text)
    loss, timesteps = diffusion_loss(worker.engine, worker.noise_schedule, data, worker.config, worker.state.generator)
    if worker.state.step + 1 == train.debug_nan_step:
        loss = loss * float("nan")
    worker.engine.backward(loss)
    gradients = gradient_bytes(worker.engine, worker.optimizer) / 2**20 if measure else None  # before step frees them
    worker.engine.step()
    worker.ema.update(worker.engine.module, worker.state.step)
    worker.state.step += 1
    return StepOutput(loss.detach(), timesteps.max(), samples, samples * frames * height * width, frames, gradients)


class NonFiniteLoss(RuntimeError):
    """A step's loss was not finite (``train.nonfinite: stop``)."""


class Window:
    """The steps since the last log. Losses and timesteps are summed on the device, so a
    step costs no host sync; a log step reduces them across ranks once."""

    def __init__(self, device: torch.device, rank: int, world: int) -> None:
        self.device, self.rank, self.world = device, rank, world
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.max_timestep = torch.zeros((), device=self.device, dtype=torch.long)
        self.first_nonfinite = torch.full((), NO_STEP, device=self.device, dtype=torch.long)
        self.finite_steps = torch.zeros((), device=self.device, dtype=torch.float64)
        self.samples = self.tokens = self.corrupt_samples = self.corrupt_batches = 0
        self.indices: dict[int, int] = {}  # step -> micro-batch, to name a failing one
        self.waited = self.computed = 0.0

    def add(self, step: int, item: MicroBatch, out: StepOutput, computed_s: float) -> None:
        finite = torch.isfinite(out.loss)
        self.loss_sum += torch.where(finite, out.loss, 0.0).double()
        here = torch.tensor(step * self.world + self.rank, device=self.device)  # ranks order one step's failures
        self.first_nonfinite = torch.where(~finite & (self.first_nonfinite == NO_STEP), here, self.first_nonfinite)
        self.finite_steps += finite.double()
        self.max_timestep = torch.maximum(self.max_timestep, out.max_timestep)
        self.samples += out.samples
        self.tokens += out.tokens
        self.corrupt_samples += item.corrupt_samples
        self.corrupt_batches += int(item.empty)
        self.indices[step] = item.index
        self.waited += item.waited_s
        self.computed += computed_s

    def reduce(self) -> tuple[float, Optional[tuple[int, int]]]:
        """The window's mean finite loss over its steps and every rank, and the first
        (step, rank) whose loss was not finite (None if none was)."""
        import torch.distributed as dist

        totals = torch.stack([self.loss_sum, self.finite_steps])
        first = self.first_nonfinite.clone()
        if dist.is_initialized():
            dist.all_reduce(totals)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        found = int(first)
        return float(totals[0] / totals[1]), None if found == NO_STEP else divmod(found, self.world)


NO_STEP = 2**62  # "no such step" in the window's device-side minimum


def log_metrics(worker: Worker, window: Window, out: StepOutput, item: MicroBatch) -> dict[str, Any]:
    """The metrics of a log step. A non-finite loss since the last one raises
    ``NonFiniteLoss`` on every rank alike (``train.nonfinite: stop``)."""
    loss, nonfinite = window.reduce()
    if nonfinite is not None and worker.config.train.nonfinite == "stop":
        step, rank = nonfinite
        batch = window.indices[step] if rank == worker.rank else (step - 1) * worker.world + rank
        raise NonFiniteLoss(f"step {step}: the loss is not finite on rank {rank} (plan micro-batch {batch}); the run "
                            "stops with its last checkpoint kept (train.nonfinite=continue would go on)")
    elapsed = max(window.waited + window.computed, 1e-9)
    norm = worker.engine.get_global_grad_norm()
    device_flops = worker.flops_per_token * window.tokens / elapsed  # this rank's model FLOP/s
    return {
        "step": worker.state.step,
        "loss": loss,
        "grad_norm": None if norm is None else float(norm),
        "nonfinite_step": None if nonfinite is None else nonfinite[0],
        **group_rates(worker.optimizer),
        "samples_per_s": window.samples * worker.world / elapsed,
        "tokens_per_s": window.tokens * worker.world / elapsed,
        "data_wait_share": window.waited / elapsed,
        "model_tflops_per_s": device_flops / 1e12,
        "mfu": None if worker.peak_flops is None else device_flops / worker.peak_flops,
        "frames": out.frames,
        "micro_batch": out.samples,
        "batch_index": item.index,
        "pre_encoded": int(worker.stored is not None),
        "max_timestep": int(window.max_timestep),
        "corrupt_samples": window.corrupt_samples,
        "corrupt_batches": window.corrupt_batches,
        "optimizer_state_mb": optimizer_state_bytes(worker.optimizer) / 2**20,
        "parameters_mb": parameter_bytes(worker.engine) / 2**20,
        "gradients_mb": out.gradients_mb,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Build, then step; log, validate and checkpoint on their intervals."""
    import ray.train

    worker = build(loop_config)
    train, state = worker.config.train, worker.state
    if state.step == 0:
        # The run's own starting point: the baseline a trained stage must beat.
        initial = worker.ema.state_dict(worker.engine.module)  # every rank: a gather under ZeRO-3
        if worker.rank == 0:
            save_stage(initial, Path(loop_config["run_dir"]) / INITIAL_WEIGHTS, worker.stage, worker.config, step=0)
        maybe_validate(worker, force=True)
    window = Window(worker.device, worker.rank, worker.world)
    for item in micro_batches(worker):
        started = time.perf_counter()
        last = state.step + 1 >= train.max_steps
        checkpoint = (state.step + 1) % train.checkpoint_every == 0 or last
        log = checkpoint or (state.step + 1) % train.log_every == 0
        out = train_step(worker, item, measure=log)
        window.add(state.step, item, out, time.perf_counter() - started)
        if log:
            try:
                metrics = log_metrics(worker, window, out, item)
            except NonFiniteLoss as err:  # every rank alike: end the run (a raise would restart it)
                if worker.log is not None:
                    worker.log.stopped(state.step, str(err))
                return
            window.reset()
            if worker.log is not None:
                worker.log.step(metrics)
        maybe_validate(worker, force=last)
        if checkpoint:
            save_and_report(worker.engine, worker.ema, state, metrics, worker.rank)
        elif log:
            ray.train.report(metrics)
        if last:
            return
    raise RuntimeError(f"the data plan ran out at step {state.step} of {train.max_steps}")


def maybe_validate(worker: Worker, force: bool = False) -> None:
    """Validation losses and sample videos every ``validate_every`` steps (and when
    ``force``d: at the start and the end); every rank computes, rank 0 writes."""
    every = worker.config.train.validate_every
    if worker.validator is None or not (force or worker.state.step % every == 0):
        return
    losses = worker.validator.losses(worker.engine)
    videos = worker.validator.samples(worker.engine)
    if worker.log is not None:
        worker.log.validation(worker.state.step, losses, videos, worker.config.sampling.fps)


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
        path = run_dir / METRICS_FILE
        kept = [row for row in read_metrics(run_dir) if step > 0 and row["step"] <= step]
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(partial, path)
        self.board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else 0)
        self.lines = open(path, "a", buffering=1)

    def _record(self, metrics: dict[str, Any]) -> None:
        self.lines.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self.board.add_scalar(key, value, metrics["step"])

    def stopped(self, step: int, reason: str) -> None:
        """The line that tells the driver (``training.job.stopped_reason``) why the run ended early."""
        self._record({"step": step, "kind": "stopped", "reason": reason})

    def step(self, metrics: dict[str, Any]) -> None:
        self._record(metrics)
        print(
            f"step {metrics['step']}: loss {metrics['loss']:.4f}, lr {metrics['lr_temporal']:.2e} / "
            f"{metrics['lr_spatial']:.2e}, {metrics['samples_per_s']:.2f} samples/s, "
            f"waiting {100 * metrics['data_wait_share']:.0f}%",
            flush=True,
        )

    def validation(self, step: int, losses: ValidationLosses, videos: list[tuple[str, np.ndarray]], fps: int) -> None:
        from pipeline.generation.video_files import contact_sheet, write_outputs

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


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``; a line cut off by a crash is dropped."""
    path = run_dir / METRICS_FILE
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _file_name(clip_id: str) -> str:
    """A clip id as a safe file name (ids hold the source's name, which may hold anything)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(clip_id))[:120] or "clip"
