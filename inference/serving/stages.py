"""The base and the refiner as two Serve deployments, each batching its requests.

They are separate so each gets its own replicas, GPUs and autoscaling: the base is cheap
at 448x256, the refiner at 1280x720 needs the big cards. ``@serve.batch`` gathers the
requests that arrive within ``batch_wait_timeout_s`` (up to ``max_batch_size``); the
cascade runs those with the same shape as one batch. The model runs in a worker thread so
the replica keeps accepting requests (and answering health checks) meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Optional

import ray
import torch
from ray import serve

from inference.cascade import Cascade, OnStep, Video
from inference.request import GenerationRequest
from pipeline.config.schema import Config, DeploymentConfig


def device_and_dtype(deployment: DeploymentConfig) -> tuple[str, torch.dtype]:
    """bf16 on a GPU the replica was given, fp32 on CPUs."""
    if deployment.num_gpus > 0 and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


class _StageReplica:
    """What both stage deployments share: loading the stage, batching settings, progress
    reports and batch counts."""

    stage: str  # "base" or "refiner"

    def __init__(self, config: Config, weights: str, store_name: str) -> None:
        deployment: DeploymentConfig = getattr(config.serving, self.stage)
        device, dtype = device_and_dtype(deployment)
        self.cascade = Cascade.from_files(config, **{self.stage: weights}, device=device, dtype=dtype)
        self.store_name = store_name
        self.max_batch_size = deployment.max_batch_size
        self.batch_sizes: Counter[int] = Counter()
        self.generate.set_max_batch_size(deployment.max_batch_size)  # type: ignore[attr-defined]
        self.generate.set_batch_wait_timeout_s(deployment.batch_wait_timeout_s)  # type: ignore[attr-defined]

    def _record(self, batch: int) -> None:
        self.batch_sizes[batch] += 1

    def _reporter(self, job_ids: list[str]) -> Optional[OnStep]:
        """Step-by-step progress to the job store, fire-and-forget (a lost report costs
        nothing but a stale progress bar)."""
        try:
            store = ray.get_actor(self.store_name)
        except ValueError:
            return None

        def report(stage: str, rows: list[int], done: int, total: int) -> None:
            store.progress.remote([job_ids[i] for i in rows], stage, done / total)

        return report

    def stats(self) -> dict[str, Any]:
        """Batches this replica ran, by size: how much the batching is paying off."""
        return {
            "batches": sum(self.batch_sizes.values()),
            "requests": sum(size * n for size, n in self.batch_sizes.items()),
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
            "max_batch_size": self.max_batch_size,
        }


@serve.deployment(name="BaseStage")
class BaseStage(_StageReplica):
    """Image -> 448x256 video (uint8 frames)."""

    stage = "base"

    @serve.batch
    async def generate(self, job_ids: list[str], requests: list[GenerationRequest]) -> list[Video]:
        self._record(len(requests))
        return await asyncio.to_thread(self.cascade.run_base, requests, self._reporter(job_ids))


@serve.deployment(name="RefinerStage")
class RefinerStage(_StageReplica):
    """Base video + text -> 1280x720 video (uint8 frames)."""

    stage = "refiner"

    @serve.batch
    async def generate(
        self, job_ids: list[str], requests: list[GenerationRequest], videos: list[Video]
    ) -> list[Video]:
        self._record(len(requests))
        return await asyncio.to_thread(self.cascade.run_refiner, videos, requests, self._reporter(job_ids))
