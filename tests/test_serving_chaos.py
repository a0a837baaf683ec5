"""The endpoint through replica deaths and a restart, over real HTTP on 127.0.0.1: job state
lives in the results location and the job store, so no job is lost or left running."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from conftest import free_port
from pipeline.config import load_config

# Replica restarts take tens of seconds each on two cores.
pytestmark = pytest.mark.slow

SERVING = [
    "serving.base.num_cpus=0.5", "serving.refiner.num_cpus=0.5",
    "serving.base.max_batch_size=4", "serving.refiner.max_batch_size=4",
    "serving.base.batch_wait_timeout_s=0.2", "serving.refiner.batch_wait_timeout_s=0.2",
    "serving.max_pending_jobs=16", "serving.sync_timeout_s=3",
]
APP = "i2vgen-chaos"


def _deploy(server: dict[str, Any]) -> None:
    from ray import serve

    from inference.serving.app import compose

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(compose(server["config"], server["base"], server["refiner"]), name=APP, route_prefix="/")
    server["url"] = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(ray_local, tiny_exports, tmp_path_factory):
    from ray import serve

    results = tmp_path_factory.mktemp("chaos-results")
    server = {"config": load_config("tiny", overrides=[*SERVING, f"serving.results_dir={results}"]),
              "base": str(tiny_exports["base"]), "refiner": str(tiny_exports["refiner"]),
              "image": tiny_exports["image"].read_bytes(), "results": results}
    _deploy(server)
    yield server
    serve.shutdown()


def _submit(server: dict[str, Any], **fields: str) -> str:
    answer = requests.post(server["url"] + "/v1/videos", files={"image": ("in.png", server["image"])},
                           data=fields, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _status(server: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The job's record; while a replica restarts the endpoint may not answer for a moment."""
    deadline = time.time() + 120
    while True:
        try:
            answer = requests.get(f"{server['url']}/v1/videos/{job_id}", timeout=30)
            if answer.status_code == 200:
                return answer.json()
        except requests.exceptions.ConnectionError:
            pass
        assert time.time() < deadline, f"job {job_id} does not answer"
        time.sleep(0.5)


def _settled(server: dict[str, Any], job_id: str, limit_s: float = 300) -> dict[str, Any]:
    deadline = time.time() + limit_s
    while (record := _status(server, job_id))["status"] in ("queued", "running"):
        assert time.time() < deadline, record
        time.sleep(0.3)
    return record


def _until_running(server: dict[str, Any], job_ids: list[str], stage: str) -> None:
    deadline = time.time() + 120
    while not any(_status(server, j)["stage"] == stage for j in job_ids):
        assert time.time() < deadline, "no job reached the stage"
        time.sleep(0.1)


def _kill_replica(deployment: str) -> None:
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if a["namespace"] == "serve" and APP in a["name"] and deployment in a["name"]]
    assert actors, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(actors[0]["name"], namespace="serve"), no_restart=True)


def _ended_well(record: dict[str, Any]) -> bool:
    return record["status"] == "succeeded" or (record["status"] == "failed" and bool(record["error"]))


def test_a_synchronous_request_past_its_time_limit_gets_504_and_frees_its_slot(server) -> None:
    answer = requests.post(server["url"] + "/v1/generate", files={"image": ("in.png", server["image"])},
                           data={"frames": "8", "steps": "200"}, timeout=60)
    assert answer.status_code == 504, answer.text
    job_id = answer.json()["detail"].split()[1]
    record = _status(server, job_id)
    assert record["status"] == "failed" and "timed out" in record["error"]
    assert requests.get(server["url"] + "/healthz", timeout=30).json()["pending_jobs"] == 0


def _kill_while_running(server: dict[str, Any], deployment: str, jobs: int, steps: str) -> list[dict[str, Any]]:
    """Submit ``jobs`` async jobs, kill ``deployment``'s replica once the base runs, and wait
    for every job to end; their final records."""
    job_ids = [_submit(server, frames="4", steps=steps, seed=str(s)) for s in range(jobs)]
    _until_running(server, job_ids, "base")
    _kill_replica(deployment)
    return [_settled(server, j) for j in job_ids]


def test_killing_the_ingress_loses_no_job(server) -> None:
    records = _kill_while_running(server, "VideoAPI", jobs=6, steps="8")
    assert all(r["status"] == "succeeded" for r in records), records


def test_a_stage_replica_killed_mid_batch_has_its_jobs_retried(server) -> None:
    records = _kill_while_running(server, "BaseStage", jobs=4, steps="12")
    assert all(_ended_well(r) for r in records), records
    assert max(r["attempts"] for r in records) == 2, records  # the killed batch ran again
    assert _settled(server, _submit(server, frames="2", steps="1"))["status"] == "succeeded"


def test_a_job_store_that_dies_is_replaced_and_drives_its_jobs_again(server) -> None:
    records = _kill_while_running(server, "JobStore", jobs=3, steps="8")
    assert all(r["status"] == "succeeded" for r in records), records
    assert all(r["attempts"] == 2 for r in records), records  # read back from storage, then run again


def test_a_restarted_application_serves_its_videos_and_finishes_its_jobs(server) -> None:
    from ray import serve

    done = _submit(server, frames="2", steps="1", seed="7")
    assert _settled(server, done)["status"] == "succeeded"
    video = requests.get(f"{server['url']}/v1/videos/{done}/content", timeout=30).content
    unfinished = _submit(server, frames="4", steps="8", seed="8")
    serve.shutdown()
    _deploy(server)
    assert requests.get(f"{server['url']}/v1/videos/{done}/content", timeout=30).content == video
    record = _settled(server, unfinished)
    assert record["status"] == "succeeded" and record["attempts"] == 2, record
    assert requests.get(f"{server['url']}/v1/videos/{unfinished}/content", timeout=30).status_code == 200
