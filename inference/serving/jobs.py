"""The job store: what every video request is doing, and the bound on how many may wait.

One Ray actor per application, shared by the ingress replicas (which admit jobs and read
them) and the stage replicas (which report progress step by step). Admission is where
overload is refused: past ``max_pending`` unfinished jobs, ``admit`` says no and the
client gets 503 with Retry-After, so the backlog never grows without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Optional

import ray

# Share of a job's progress bar each stage fills; the rest is writing the mp4.
_SPANS = {True: {"base": (0.0, 0.45), "refiner": (0.45, 0.95)}, False: {"base": (0.0, 0.95)}}
UNFINISHED = ("queued", "running")


@ray.remote(num_cpus=0)
class JobStore:
    def __init__(self, max_pending: int, keep_finished: int) -> None:
        self.max_pending = max_pending
        self.keep_finished = keep_finished
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.content: dict[str, bytes] = {}

    def admit(self, job_id: str, refined: bool, parameters: dict[str, Any]) -> bool:
        """Record a new job, or refuse it when ``max_pending`` jobs are unfinished."""
        if self.pending() >= self.max_pending:
            return False
        self.jobs[job_id] = {
            "id": job_id, "status": "queued", "stage": None, "progress": 0.0, "refined": refined,
            "parameters": parameters, "created": time.time(), "finished": None, "error": None,
        }
        return True

    def progress(self, job_ids: list[str], stage: str, fraction: float) -> None:
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job["status"] not in UNFINISHED:
                continue
            low, high = _SPANS[job["refined"]].get(stage, (0.0, 0.95))
            job.update(status="running", stage=stage, progress=round(low + (high - low) * fraction, 4))

    def finish(self, job_id: str, mp4: Optional[bytes] = None, error: Optional[str] = None) -> None:
        """Mark a job done; keep its mp4 (when asked to) for GET, forgetting the oldest."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        job.update(status="failed" if error else "succeeded", stage=None, error=error, finished=time.time())
        if error is None:
            job["progress"] = 1.0
        if mp4 is not None:
            self.content[job_id] = mp4
            job["bytes"] = len(mp4)
        finished = [k for k, j in self.jobs.items() if j["status"] not in UNFINISHED]
        for old in finished[: max(0, len(finished) - self.keep_finished)]:
            self.jobs.pop(old)
            self.content.pop(old, None)

    def status(self, job_id: str) -> Optional[dict[str, Any]]:
        return self.jobs.get(job_id)

    def video(self, job_id: str) -> Optional[bytes]:
        return self.content.get(job_id)

    def pending(self) -> int:
        return sum(j["status"] in UNFINISHED for j in self.jobs.values())

    def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        for job in self.jobs.values():
            counts[job["status"]] += 1
        return counts
