"""A run's checkpoints: every rank's DeepSpeed shards, the fp32 EMA and each rank's random
state, saved into one temporary folder that Ray Train copies into the run folder, then
removed, and read back on resume.

A resume trusts nothing in the run folder on its word: every file must match the SHA-256
manifests the ranks wrote beside it (``training.manifest``), and DeepSpeed's shards are
unpickled with ``weights_only=True`` (``training.weights_only``), so a planted pickle cannot
run code on the workers.

What a resume needs beyond the weights is a ``TrainState``: the step (each rank's data
plan is fixed per micro-batch index, so the step is also the data position) and the
rank's random generators, so that the steps after a resume draw the noise, timesteps,
condition dropout and layer dropout that an unbroken run would have drawn.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.manifest import checkpoint_problems, refusal, write_manifest
from training.optim import EMA

log = logging.getLogger("training")

CHECKPOINT_TAG = "state"
EMA_FILE = "ema.safetensors"


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


@dataclass
class TrainState:
    """The step and this rank's generators: ``generator`` draws the loss's noise,
    timesteps and condition dropout; torch's global generator (and CUDA's) the layers'
    dropout."""

    step: int
    generator: torch.Generator

    @classmethod
    def fresh(cls, seed: int, rank: int, device: torch.device) -> "TrainState":
        torch.manual_seed(seed + rank)
        return cls(0, torch.Generator(device=device).manual_seed(seed * 7919 + rank * 104729))

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.generator.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.generator.device)
        return state

    def load_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.generator.device)


def save_and_report(engine, ema: EMA, state: TrainState, metrics: dict[str, Any], rank: int) -> None:
    """Every rank saves its shard and random state into one folder, then the manifest of
    what it saved, and reports it (Ray merges the ranks' folders into the run's checkpoint,
    then this rank's copy is removed: Ray's synchronous upload leaves it behind, a full
    shard per rank per checkpoint)."""
    import ray.train
    import torch.distributed as dist
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="i2vgen-ckpt-", ignore_cleanup_errors=True) as folder:
        engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, client_state={"step": state.step})
        torch.save(state.rng_state(), Path(folder, _rng_file(rank)))
        averaged = ema.state_dict(engine.module)  # every rank: a gather under ZeRO-3
        if rank == 0:
            save_file(averaged, str(Path(folder, EMA_FILE)))
            Path(folder, "metrics.json").write_text(json.dumps(metrics))
        write_manifest(Path(folder), rank, dist.get_world_size(), state.step)
        dist.barrier()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def verify_on_every_rank(folder: Path, rank: int) -> None:
    """Check ``folder`` against its manifests before any rank reads it: each rank hashes a
    share of the files, and every rank raises the same ``CheckpointRefused`` if any share
    found a fault (so no rank goes on to load while another refuses)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    found: list[Any] = [None] * world
    dist.all_gather_object(found, checkpoint_problems(folder, rank, world))
    problems = [problem for _, share in found for problem in share]
    if problems:
        raise refusal(folder, found[0][0], problems)


def restore(checkpoint, engine, ema: EMA, state: TrainState, rank: int) -> None:
    """Load Ray's ``checkpoint`` into the engine, the EMA and ``state``, once every file has
    matched its manifest. A rank with no saved random state (the run now has more workers
    than saved it) reseeds its generators from the step: the run continues, but not bit for
    bit as an unbroken one."""
    from safetensors.torch import load_file

    from training.weights_only import load_weights_only

    with checkpoint.as_directory() as folder:
        verify_on_every_rank(Path(folder), rank)
        load_weights_only(engine)
        _, client = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        ema.load_state_dict(engine.module, load_file(str(Path(folder, EMA_FILE))))
        state.step = int(client["step"])
        saved = Path(folder, _rng_file(rank))
        if saved.exists():
            state.load_rng_state(torch.load(saved, weights_only=True))
        else:
            log.warning("checkpoint at step %d holds no random state for rank %d: reseeding from the step",
                        state.step, rank)
            state.generator.manual_seed(state.generator.initial_seed() + state.step)
