"""The job store: one Serve deployment that admits, drives, cancels and forgets jobs.

It is the only place job state changes, and every change is written to the results
location before it counts, so:
- losing an HTTP replica loses nothing: the ingress only submits and reads, and the work
  that drives a job (base, then refiner) runs here;
- losing this replica loses nothing either: Serve starts a new one, which reads the stored
  records back, and drives again the jobs that had not finished (each job gets
  ``serving.job_attempts`` tries, then fails with the reason);
- a stage replica that dies mid-batch fails its jobs' calls with a worker-lost error: they
  are retried the same way, while an error the stage raised fails the job with its message;
- a running job whose stage reports no step for ``serving.stalled_job_s`` is failed, so no
  job stays "running" forever, and a cancelled one frees its slot at once.

Media never pass through here: the base's output goes to the refiner as an object
reference (with its request, read once by the base), and the last stage writes the mp4 to
the results location itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from ray import serve
from ray.exceptions import NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from inference.serving.access import Refusal, RequestRate
from inference.serving.jobs import JobTable
from inference.serving.metrics import ServingMetrics
from inference.serving.results import ResultsLocation
from pipeline.config.schema import ServingConfig
from pipeline.ray_runtime import find_in_chain

log = logging.getLogger("ray.serve")

# A process or its node went away, not the request's fault: worth another attempt.
WORKER_LOST = (RayActorError, WorkerCrashedError, ObjectLostError, NodeDiedError, OutOfMemoryError)


def worker_lost(err: BaseException) -> bool:
    """Whether ``err``, or what it wraps, says a process went away (Serve reports a dead
    upstream stage as its own exception, with the actor's death as the cause)."""
    return find_in_chain(err, WORKER_LOST) is not None


# What Ray's messages carry of the cluster's layout: IPv4 addresses (with ports) and pids.
_LAYOUT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\bpid[=: ]+\d+", re.IGNORECASE)


def short_error(err: BaseException) -> str:
    """The error's type and first line, for the client: no remote traceback, no addresses,
    no process ids."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    line = _LAYOUT.sub("<hidden>", text[0] if text else "")[:300]
    return f"{type(cause).__name__}: {line}".rstrip(": ")


def logged_error(job_id: str, err: BaseException, level: int = logging.ERROR) -> str:
    """Log ``err`` with its traceback under a new error id; the client's short form, with
    the id, so that whoever runs the server can find the traceback."""
    error_id = uuid.uuid4().hex[:12]
    log.log(level, "job %s: %s (error id %s)", job_id, short_error(err), error_id, exc_info=err)
    return f"{short_error(err)} (error id {error_id})"


# Every method is a coroutine: Serve runs plain methods on a thread pool, and the table is
# only ever touched from the replica's event loop.
@serve.deployment(
    name="JobStore", num_replicas=1, ray_actor_options={"num_cpus": 0},
    # Stages report every sampling step here: an access-log line each would drown the logs.
    logging_config={"enable_access_log": False},
)
class JobStore:
    async def __init__(
        self, serving: ServingConfig, results_uri: str, base: DeploymentHandle, refiner: Optional[DeploymentHandle]
    ) -> None:
        self.base, self.refiner = base, refiner
        self.attempts, self.stalled_s = serving.job_attempts, serving.stalled_job_s
        self.table = JobTable(serving.max_pending_jobs, serving.keep_finished_jobs, serving.keep_finished_s,
                              serving.max_pending_jobs_per_key)
        self.retry_after_s = serving.retry_after_s
        self.submissions = RequestRate(serving.submissions_per_minute_per_key)
        stages = {"base": serving.base.max_batch_size}
        if refiner is not None:
            stages["refiner"] = serving.refiner.max_batch_size
        self.metrics = ServingMetrics(list(stages), stages)
        self.results = ResultsLocation(results_uri)
        # One writer thread: the records of one job reach storage in the order they changed.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="job-records")
        self.tasks: dict[str, asyncio.Task] = {}
        self.done: dict[str, asyncio.Event] = {}
        # Ids cancelled before their submit arrived (a client that hung up at once).
        self.cancelled_early: deque[str] = deque(maxlen=4096)
        await self._recover()
        self.reaper = asyncio.create_task(self._reap_forever())

    async def _recover(self) -> None:
        """Take back the jobs a previous store left in the results location."""
        # Unguarded: a store that cannot read its location should fail to start, loudly.
        records = await asyncio.get_running_loop().run_in_executor(self.writer, lambda: list(self.results.records()))
        self.table.restore(records)
        for record in records:
            self.done[record["id"]] = asyncio.Event()
        resumed = [r["id"] for r in records if r["status"] in ("queued", "running")]
        for job_id in resumed:
            self.table.get(job_id)["last_error"] = "the job store restarted while it ran"
            self._start(job_id)
        for job_id, record in self.table.finished.items():
            self.done[job_id].set()
        if records:
            log.info("job store: %d stored jobs taken back, %d of them unfinished and driven again",
                     len(records), len(resumed))

    def _persist(self, record: dict[str, Any]) -> asyncio.Future:
        return self._storage(self.results.save_record, dict(record))

    def _storage(self, write: Callable[..., None], *args: Any) -> asyncio.Future:
        """Run a write to the results location on the writer thread. A failed write (storage
        down) is logged, not raised: the table in memory stays the truth while this replica
        lives, and storage only matters to its successor."""

        def guarded() -> None:
            try:
                write(*args)
            except OSError:
                log.exception("job store: %s to %s failed", write.__name__, self.results.uri)

        return asyncio.get_running_loop().run_in_executor(self.writer, guarded)

    def _start(self, job_id: str) -> None:
        # A fresh context: the job's stage calls must not belong to (and be cancelled with)
        # the request that happened to submit it.
        task = asyncio.create_task(self._drive(job_id), context=contextvars.Context())
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def _drive(self, job_id: str) -> None:
        """Base, then refiner (which writes the mp4), retrying a lost worker."""
        while True:
            record = self.table.start_attempt(job_id, time.time())
            if record["attempts"] > self.attempts:
                await self._finish(
                    job_id, "failed", f"gave up after {self.attempts} attempts; the last one: {record['last_error']}"
                )
                return
            await self._persist(record)
            responses: list[DeploymentResponse] = []
            try:
                responses.append(self.base.generate.remote(job_id))
                if self.refiner is not None:
                    responses.append(self.refiner.generate.remote(job_id, responses[0]))
                await responses[-1]
            except asyncio.CancelledError:
                for response in responses:
                    response.cancel()
                raise
            except Exception as err:  # the job fails with the reason (or is retried); the store goes on
                if worker_lost(err):  # retried while attempts last
                    record["last_error"] = logged_error(job_id, err, logging.WARNING)
                    continue
                await self._finish(job_id, "failed", logged_error(job_id, err))
                return
            await self._finish(job_id, "succeeded")
            return

    async def _finish(self, job_id: str, status: str, error: Optional[str] = None) -> Optional[dict[str, Any]]:
        """End a job. Every change happens before the first await, and the writes are queued
        on the writer thread, so a caller cancelled here still leaves the job ended."""
        record = self.table.finish(job_id, status, time.time(), error)
        if record is None:
            return None
        self.metrics.record_outcome(status, record["finished"] - record["created"])
        self.done[job_id].set()
        await asyncio.gather(self._persist(record), self._storage(self.results.forget_request, job_id))
        return record

    async def _reap_forever(self) -> None:
        """Fail stalled jobs, forget expired ones and idle keys' rates, every few seconds."""
        while True:
            await asyncio.sleep(min(5.0, self.stalled_s / 4))
            now = time.time()
            for job_id in self.table.stalled(now, self.stalled_s):
                await self.cancel(job_id, "failed", f"no progress for {self.stalled_s:g} s: its stage stalled")
            for job_id in self.table.expired(now):
                await self._forget(job_id)
            self.submissions.forget_idle()

    async def _forget(self, job_id: str) -> None:
        self.table.forget(job_id)
        self.done.pop(job_id, None)
        await self._storage(self.results.forget, job_id)

    async def submit(
        self, job_id: str, refined: bool, parameters: dict[str, Any], owner: Optional[str]
    ) -> Optional[Refusal]:
        """Admit and start a job whose request is already stored, made by the key whose
        digest is ``owner``; or say why not (the queue, or the key's quota, is full; the
        job was cancelled before it arrived). No await: a cancelled call either did all of
        this or none of it."""
        if job_id in self.cancelled_early:
            return Refusal(409, f"job {job_id} was cancelled before it was admitted")
        refusal = self.table.refusal(owner, self.retry_after_s)
        if refusal is not None:
            return refusal
        self.table.admit(job_id, refined, parameters, time.time(), owner)
        self.done[job_id] = asyncio.Event()
        self._start(job_id)  # its first step stores the record
        return None

    async def take_submission(self, owner: str) -> Optional[float]:
        """Count a submission of ``owner`` against its per-minute rate: None when allowed,
        else the seconds until it would be. Here, not in the ingress, so that the rate holds
        however many ingress replicas there are."""
        return self.submissions.take(owner)

    async def cancel(self, job_id: str, status: str = "cancelled", reason: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Stop an unfinished job (its slot is free at once); a finished one is left as it is.

        A job this store has not seen was abandoned while it was being submitted: its id is
        remembered, so that a submit arriving after this cancel is refused, and its stored
        request is deleted."""
        if self.table.get(job_id) is None:
            self.cancelled_early.append(job_id)
            await self._storage(self.results.forget, job_id)
            return None
        task = self.tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        record = await self._finish(job_id, status, reason)
        return dict(record) if record else self._record(job_id)

    async def delete(self, job_id: str, owner: Optional[str]) -> Optional[dict[str, Any]]:
        """``DELETE``: cancel an unfinished job, or forget a finished one and its video (the
        caller's own jobs only)."""
        record = self.table.owned(job_id, owner)
        if record is None:
            return None
        if record["status"] in ("queued", "running"):
            return await self.cancel(job_id)
        await self._forget(job_id)
        return {**record, "deleted": True}

    async def wait(self, job_id: str) -> Optional[dict[str, Any]]:
        """The job's record once it has finished (None for an unknown job)."""
        done = self.done.get(job_id)
        if done is None:
            return None
        await done.wait()
        return self._record(job_id)

    async def status(self, job_id: str, owner: Optional[str]) -> Optional[dict[str, Any]]:
        record = self.table.owned(job_id, owner)
        return dict(record) if record else None

    def _record(self, job_id: str) -> Optional[dict[str, Any]]:
        record = self.table.get(job_id)
        return dict(record) if record else None

    async def progress(self, job_ids: list[str], stage: str, fraction: float) -> None:
        self.table.progress(job_ids, stage, fraction, time.time())

    async def record_batch(self, stage: str, size: int, seconds: float) -> None:
        self.metrics.record_batch(stage, size, seconds)

    async def pending(self) -> int:
        return self.table.pending()

    async def stats(self) -> dict[str, Any]:
        return self.metrics.snapshot(self.table.counts())

    async def prometheus(self) -> str:
        return self.metrics.prometheus(self.table.counts())
