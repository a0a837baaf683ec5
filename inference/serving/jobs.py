"""The job table: what every video request is doing, the bound on how many may wait, and
which finished jobs to forget.

Plain bookkeeping with no Ray in it, so that its rules are unit-tested directly; the job
store (``store.py``) owns one and persists its records. Admission is where overload is
refused: past ``max_pending`` unfinished jobs the client gets 503 with Retry-After, and past
its key's ``max_pending_per_owner`` 429. Finished jobs are forgotten in the order they *finished*, past
``keep_finished`` of them or ``keep_finished_s`` after finishing, whichever comes first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from inference.serving.access import Refusal

# Share of a job's progress bar each stage fills; the rest is writing the mp4.
_SPANS = {True: {"base": (0.0, 0.45), "refiner": (0.45, 0.95)}, False: {"base": (0.0, 0.95)}}
UNFINISHED = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


class JobTable:
    def __init__(self, max_pending: int, keep_finished: int, keep_finished_s: float, max_pending_per_owner: int = 0) -> None:
        self.max_pending = max_pending
        self.max_pending_per_owner = max_pending_per_owner  # 0: no per-key bound
        self.keep_finished = keep_finished
        self.keep_finished_s = keep_finished_s
        self.unfinished: dict[str, dict[str, Any]] = {}
        # Finished jobs in the order they finished: the front is the first to forget.
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def refusal(self, owner: Optional[str], retry_after_s: int) -> Optional[Refusal]:
        """Why a new job of ``owner`` may not be admitted now (None: it may): its key already
        has ``max_pending_per_owner`` unfinished jobs (429), or everyone's jobs fill the
        queue (503). Both say when to try again."""
        retry = {"Retry-After": str(retry_after_s)}
        if owner is not None and self.max_pending_per_owner > 0:
            own = sum(1 for record in self.unfinished.values() if record.get("owner") == owner)
            if own >= self.max_pending_per_owner:
                return Refusal(429, f"this key has {own} unfinished jobs, its limit "
                                    "(serving.max_pending_jobs_per_key); try again when one finishes", retry)
        if len(self.unfinished) >= self.max_pending:
            return Refusal(503, f"{self.max_pending} jobs are pending; try again later", retry)
        return None

    def admit(self, job_id: str, refined: bool, parameters: dict[str, Any], now: float,
              owner: Optional[str] = None) -> dict[str, Any]:
        """A new queued job's record, made by the key whose digest is ``owner`` (checked by
        ``refusal`` first)."""
        record = {
            "id": job_id, "status": "queued", "stage": None, "progress": 0.0, "refined": refined,
            "parameters": parameters, "created": now, "heartbeat": now, "finished": None,
            "attempts": 0, "error": None, "owner": owner,
        }
        self.unfinished[job_id] = record
        return record

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Take back stored records (once, into an empty table after a restart), whatever the
        bound: they were admitted."""
        for record in sorted(records, key=lambda r: r.get("finished") or 0.0):
            if record["status"] in UNFINISHED:
                self.unfinished[record["id"]] = record
            else:
                self.finished[record["id"]] = record

    def get(self, job_id: str) -> Optional[dict[str, Any]]:
        return self.unfinished.get(job_id) or self.finished.get(job_id)

    def owned(self, job_id: str, owner: Optional[str]) -> Optional[dict[str, Any]]:
        """The job if ``owner`` made it: to any other caller it does not exist."""
        record = self.get(job_id)
        return record if record is not None and record.get("owner") == owner else None

    def start_attempt(self, job_id: str, now: float) -> dict[str, Any]:
        record = self.unfinished[job_id]
        record.update(status="queued", stage=None, progress=0.0, heartbeat=now, attempts=record["attempts"] + 1)
        return record

    def progress(self, job_ids: list[str], stage: str, fraction: float, now: float) -> None:
        """A stage's step report: the job runs, its bar moves, and its heartbeat is fresh."""
        for job_id in job_ids:
            record = self.unfinished.get(job_id)
            if record is None:
                continue
            low, high = _SPANS[record["refined"]].get(stage, (0.0, 0.95))
            record.update(status="running", stage=stage, progress=round(low + (high - low) * fraction, 4),
                          heartbeat=now)

    def finish(self, job_id: str, status: str, now: float, error: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Move an unfinished job to ``status``; None if it had already finished."""
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status!r}")
        record = self.unfinished.pop(job_id, None)
        if record is None:
            return None
        record.update(status=status, stage=None, error=error, finished=now)
        if status == "succeeded":
            record["progress"] = 1.0
        self.finished[job_id] = record
        return record

    def forget(self, job_id: str) -> Optional[dict[str, Any]]:
        return self.finished.pop(job_id, None)

    def expired(self, now: float) -> list[str]:
        """Finished jobs to forget now, first-finished first: over the count, or too old."""
        over = max(0, len(self.finished) - self.keep_finished)
        out = []
        for i, (job_id, record) in enumerate(self.finished.items()):
            if i < over or now - record["finished"] > self.keep_finished_s:
                out.append(job_id)
            else:
                break  # finish order: everything after this one is younger
        return out

    def stalled(self, now: float, timeout_s: float) -> list[str]:
        """Running jobs whose stage has reported nothing for ``timeout_s``."""
        return [job_id for job_id, record in self.unfinished.items()
                if record["status"] == "running" and now - record["heartbeat"] > timeout_s]

    def pending(self) -> int:
        return len(self.unfinished)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(UNFINISHED + FINISHED, 0)
        for record in (*self.unfinished.values(), *self.finished.values()):
            counts[record["status"]] += 1
        return counts
