"""The base and the refiner as two Serve deployments, each batching its requests.

They are separate so each gets its own replicas, GPUs and autoscaling (the base is cheap at
448x256, the refiner at 1280x720 needs the big cards), and so they work as a pipeline: the
refiner runs batch k while the base runs batch k+1. A call names a job; the base reads the
job's request from the results location and hands it, with its video, to the refiner; the
last stage writes the job's mp4 there, so neither requests nor videos pass through the job
store.

``@serve.batch`` gathers the requests waiting at the replica (waiting at most
``batch_wait_timeout_s`` for more); the cascade runs those with the same shape as one
batch. The batch size adapts to the queue: in a cascade each stage takes at most half of
what waits at it (up to ``max_batch_size``), so that the base hands the refiner a batch and
starts on the next, and the refiner's results (hence the clients' next requests) come back
staggered, instead of every request moving through both stages in lockstep. The model runs in a worker thread so the replica keeps accepting
requests (and answering health checks) meanwhile. Each step and each batch is reported to
the job store: the steps are the jobs' heartbeat, the batches its statistics.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from typing import Optional

import torch
from ray import serve

from pipeline.generation.cascade import Cascade, OnStep, Video
from pipeline.generation.request import GenerationRequest
from inference.serving.results import ResultsLocation
from pipeline.generation.video_files import mp4_bytes
from pipeline.config.schema import Config, DeploymentConfig


def device_and_dtype(deployment: DeploymentConfig) -> tuple[str, torch.dtype]:
    """bf16 on a GPU the replica was given, fp32 on CPUs."""
    if deployment.num_gpus > 0 and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


_ABANDONED_KEPT = 4096
# Progress reports per batch at most this often (and at its last step): fast steps on a GPU
# would otherwise send the job store hundreds of calls a second.
PROGRESS_INTERVAL_S = 0.5


class BatchAbandoned(RuntimeError):
    """Every job of a running batch was cancelled: the sampling loop stops."""


class _StageReplica:
    """What both stage deployments share: loading the stage and the requests, batching,
    reports to the job store, and (for the last stage) writing the mp4."""

    stage: str  # "base" or "refiner"

    def __init__(self, config: Config, weights: str, results_uri: str, last: bool) -> None:
        deployment: DeploymentConfig = getattr(config.serving, self.stage)
        device, dtype = device_and_dtype(deployment)
        self.cascade = Cascade.from_files(config, **{self.stage: weights}, device=device, dtype=dtype)
        self.results = ResultsLocation(results_uri)
        self.last, self.crf = last, config.serving.crf
        self.max_batch_size = deployment.max_batch_size
        # A batch takes at most 1/stages of what waits: in a cascade the base hands the refiner
        # a batch and starts the next, and the refiner's results come back staggered.
        self.stages = 2 if self.stage == "refiner" or not last else 1
        self.waiting = 0  # requests in ``generate``: queued for a batch, or in the running one
        # Jobs cancelled while waiting for or running in a batch, oldest first (written from
        # the event loop, read by the model's thread; bounded, as cancels of queued jobs stay).
        self.abandoned: dict[str, None] = {}
        self.store = serve.get_deployment_handle("JobStore", serve.get_replica_context().app_name)
        self._batched.set_batch_wait_timeout_s(deployment.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def generate(
        self, job_id: str, upstream: Optional[tuple[Video, GenerationRequest]] = None
    ) -> tuple[Video, GenerationRequest] | int:
        """The job's video from this stage, handed on with its request (read from storage
        once, by the first stage); the last stage stores the mp4 and answers its size."""
        if upstream is None:
            request, video = await asyncio.to_thread(self.results.load_request, job_id), None
        else:
            video, request = upstream
        self.waiting += 1
        share = math.ceil(self.waiting / self.stages)
        self._batched.set_max_batch_size(max(1, min(self.max_batch_size, share)))  # type: ignore[attr-defined]
        try:
            out = await self._batched(job_id, request, video)
        except asyncio.CancelledError:  # the job was cancelled: its batch may stop early
            self.abandoned[job_id] = None
            if len(self.abandoned) > _ABANDONED_KEPT:
                del self.abandoned[next(iter(self.abandoned))]
            raise
        finally:
            self.waiting -= 1
        if not self.last:
            return out, request
        mp4 = await asyncio.to_thread(mp4_bytes, out, request.fps, self.crf)
        await asyncio.to_thread(self.results.save_video, job_id, mp4)
        return len(mp4)

    @serve.batch
    async def _batched(
        self, job_ids: list[str], requests: list[GenerationRequest], videos: list[Optional[Video]]
    ) -> list[Video]:
        start = time.perf_counter()
        try:
            out = await asyncio.to_thread(self._run, requests, videos, self._reporter(job_ids))
        finally:
            for job_id in job_ids:
                self.abandoned.pop(job_id, None)
        self._tell_store("record_batch", self.stage, len(requests), time.perf_counter() - start)
        return out

    def _run(self, requests: list[GenerationRequest], videos: list[Optional[Video]], on_step: OnStep) -> list[Video]:
        """This stage's half of the cascade, on one batch."""
        if self.stage == "base":
            return self.cascade.run_base(requests, on_step)
        return self.cascade.run_refiner(videos, requests, on_step)

    def _reporter(self, job_ids: list[str]) -> OnStep:
        """Step-by-step progress to the job store, fire-and-forget from the model's thread
        (a lost report costs a stale progress bar; many lost ones, a stalled-job verdict).
        A batch whose jobs have all been cancelled stops at its next step."""
        loop, last_sent = asyncio.get_running_loop(), [0.0]

        def report(stage: str, rows: list[int], done: int, total: int) -> None:
            if all(job_id in self.abandoned for job_id in job_ids):
                raise BatchAbandoned(f"{stage}: every job of this batch was cancelled at step {done}/{total}")
            now = time.monotonic()
            if done < total and now - last_sent[0] < PROGRESS_INTERVAL_S:
                return
            last_sent[0] = now
            ids = [job_ids[i] for i in rows]
            loop.call_soon_threadsafe(self._tell_store, "progress", ids, stage, done / total)

        return report

    def _tell_store(self, method: str, *args: object) -> None:
        """A fire-and-forget call from a fresh context: inside a request's context, Serve
        would cancel it with that request, and one cancelled job would silence the reports
        (the heartbeats) of the others in its batch."""
        contextvars.Context().run(lambda: getattr(self.store, method).remote(*args))


@serve.deployment(name="BaseStage")
class BaseStage(_StageReplica):
    """Image -> 448x256 video (uint8 frames)."""

    stage = "base"


@serve.deployment(name="RefinerStage")
class RefinerStage(_StageReplica):
    """Base video + text -> 1280x720 video (uint8 frames)."""

    stage = "refiner"
