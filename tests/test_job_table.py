"""The job table's rules (admission, eviction, stalls) and the results location's files."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.generation.request import GenerationRequest
from inference.serving.jobs import JobTable
from inference.serving.results import ResultsLocation, new_job_id


def _table(keep: int = 1, keep_s: float = 3600.0, pending: int = 4) -> JobTable:
    return JobTable(max_pending=pending, keep_finished=keep, keep_finished_s=keep_s)


def test_eviction_follows_finish_order_not_creation_order() -> None:
    table = _table(keep=1)
    table.admit("a", False, {}, now=0.0)
    table.admit("b", False, {}, now=1.0)
    table.finish("b", "succeeded", now=2.0)
    assert table.expired(now=2.0) == []
    table.finish("a", "succeeded", now=3.0)
    assert table.expired(now=3.0) == ["b"]  # a finished last, so it stays
    table.forget("b")
    assert table.get("a")["status"] == "succeeded" and table.get("b") is None


def test_finished_jobs_expire_by_age_first_finished_first() -> None:
    table = _table(keep=10, keep_s=5.0)
    for i, job_id in enumerate("xyz"):
        table.admit(job_id, False, {}, now=0.0)
        table.finish(job_id, "failed", now=float(i), error="boom")
    assert table.expired(now=5.5) == ["x"]
    assert table.expired(now=7.5) == ["x", "y", "z"]


def test_admission_is_bounded_by_unfinished_jobs_and_a_cancel_frees_a_slot() -> None:
    table = _table(pending=2)
    assert table.refusal(None, 30) is None and table.admit("a", True, {}, now=0.0)
    assert table.refusal(None, 30) is None and table.admit("b", True, {}, now=0.0)
    full = table.refusal(None, 30)
    assert full.status == 503 and full.headers == {"Retry-After": "30"}
    table.finish("a", "cancelled", now=1.0, error="the client disconnected")
    assert table.pending() == 1 and table.refusal(None, 30) is None and table.admit("c", True, {}, now=1.0)
    assert table.finish("a", "succeeded", now=2.0) is None  # a finished job stays as it ended
    assert table.counts() == {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1}
    with pytest.raises(ValueError, match="not a final status"):
        table.finish("b", "running", now=2.0)


def test_each_key_has_its_own_pending_quota_and_sees_only_its_own_jobs() -> None:
    table = JobTable(max_pending=10, keep_finished=10, keep_finished_s=3600.0, max_pending_per_owner=2)
    table.admit("a1", False, {}, now=0.0, owner="alice")
    table.admit("a2", False, {}, now=0.0, owner="alice")
    refused = table.refusal("alice", 7)
    assert refused.status == 429 and "max_pending_jobs_per_key" in refused.detail and refused.headers["Retry-After"] == "7"
    assert table.refusal("bob", 7) is None  # alice's jobs do not count against bob
    assert table.owned("a1", "alice")["id"] == "a1" and table.owned("a1", "bob") is None and table.owned("a1", None) is None
    table.finish("a1", "succeeded", now=1.0)
    assert table.refusal("alice", 7) is None and table.owned("a1", "alice")["status"] == "succeeded"


def test_progress_is_the_heartbeat_and_a_silent_running_job_is_stalled() -> None:
    table = _table()
    table.admit("a", True, {}, now=0.0)
    table.admit("b", True, {}, now=0.0)
    table.progress(["a"], "refiner", 0.5, now=10.0)
    record = table.get("a")
    assert record["status"] == "running" and record["stage"] == "refiner" and record["progress"] == pytest.approx(0.7)
    assert table.stalled(now=15.0, timeout_s=10.0) == []
    assert table.stalled(now=25.0, timeout_s=10.0) == ["a"]  # b is queued: waiting is not stalling


def test_restored_records_keep_their_finish_order() -> None:
    table = _table(keep=1)
    table.restore([{"id": "late", "status": "succeeded", "finished": 9.0},
                   {"id": "open", "status": "running", "attempts": 1, "finished": None},
                   {"id": "early", "status": "succeeded", "finished": 1.0}])
    assert table.expired(now=10.0) == ["early"] and table.pending() == 1


def test_results_location_round_trips_a_request_and_refuses_foreign_ids(tmp_path) -> None:
    results = ResultsLocation(str(tmp_path / "results"))
    request = GenerationRequest(image=np.arange(24, dtype=np.uint8).reshape(2, 4, 3), prompt="ünïcode ✓", frames=4,
                                fps=8, steps=2, guidance=9.0, sampler="ddim", seed=2**62, refine_from=600)
    job_id = new_job_id()
    results.save_request(job_id, request)
    loaded = results.load_request(job_id)
    assert np.array_equal(loaded.image, request.image) and loaded.prompt == request.prompt and loaded.seed == 2**62
    results.save_record({"id": job_id, "status": "queued"})
    results.save_video(job_id, b"mp4")
    assert list(results.records()) == [{"id": job_id, "status": "queued"}] and results.video(job_id) == b"mp4"
    (tmp_path / "results" / "jobs" / f"{'0' * 32}.json").write_text("{half a record")
    assert len(list(results.records())) == 1  # an unreadable record is skipped
    results.forget(job_id)
    assert results.video(job_id) is None and list(results.records()) == []
    for hostile in ("../../etc/passwd", "A" * 32, ""):
        with pytest.raises(ValueError, match="not a job id"):
            results.video(hostile)
