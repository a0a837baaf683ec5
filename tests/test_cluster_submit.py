"""A real two-node Ray cluster on 127.0.0.1: ``ray start`` a head and a second node with a
custom resource, ``ray job submit --working-dir`` the curation job, and check that it
succeeded, wrote its tables, and ran tasks on both nodes. Everything started here is
stopped here, by process group, so the test's own Ray and any other cluster are untouched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import lance
import pytest

from curation.synthetic import write_sample_corpus

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _node_ports() -> list[str]:
    """Every port a Ray node opens, chosen free, so two nodes (and the suite's own Ray) never collide."""
    names = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port")
    return [f"--{name}={port}" for name, port in zip(names, _free_ports(len(names)))]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group: one signal stops the node and its workers."""
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args, *_node_ports()],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.util.state import list_nodes

    logs = tmp_path_factory.mktemp("cluster_logs")
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dashboard, client = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python`
    head = _start(["--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--dashboard-port={dashboard}",
                   "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}", "--num-cpus=2",
                   f"--temp-dir={temp_dir}"], env, logs / "head.log")
    started = [head]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(lambda: len(list_nodes(address=address)) >= 1, 120, logs / "head.log")
        started.append(_start([f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                               '--resources={"curation_node": 1}'], env, logs / "worker.log"))
        _wait_for(lambda: sum(n.state == "ALIVE" for n in list_nodes(address=address)) == 2, 120,
                  logs / "worker.log")
        yield address
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for(ready, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except Exception:  # the dashboard is not up yet
            pass
        time.sleep(1)
    raise AssertionError(f"the Ray node did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_curation_submitted_as_a_ray_job_runs_on_both_nodes(cluster, tmp_path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_nodes, list_tasks

    corpus, out = tmp_path / "corpus", tmp_path / "curated"
    write_sample_corpus(corpus, videos=3, seed=2)
    submission = f"curate-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", cluster, "--submission-id", submission, "--working-dir", str(REPO),
         "--runtime-env", "clusters/runtime_env.yaml", "--",
         "python", "-m", "pipeline", "curate", str(corpus), "--out", str(out), "--preset", "tiny", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    client = JobSubmissionClient(cluster)
    assert client.get_job_status(submission) == JobStatus.SUCCEEDED, proc.stdout[-4000:] + proc.stderr[-2000:]
    clips = lance.dataset(str(out / "clips.lance")).to_table(columns=["clip_id", "keep"])
    rejects = lance.dataset(str(out / "rejects.lance")).to_table(columns=["source", "reason"])
    assert clips.num_rows >= 6 and rejects.num_rows >= 3  # shots of 3 videos; the broken files
    job_id = client.get_job_info(submission).job_id
    tasks = list_tasks(address=cluster, filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
    nodes = {t.node_id for t in tasks if t.node_id}
    assert nodes == {n.node_id for n in list_nodes(address=cluster)}, f"tasks ran on {len(nodes)} of 2 nodes"
    # the same corpus curated on one machine gives the same tables
    local = tmp_path / "local"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(corpus), "--out", str(local), "--preset",
                           "tiny", "--quiet"], capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, columns in (("clips.lance", ["clip_id", "keep", "weight"]), ("rejects.lance", ["source", "stage"])):
        here, there = (lance.dataset(str(d / name)).to_table(columns=columns).to_pylist() for d in (local, out))
        assert sorted(map(str, here)) == sorted(map(str, there)), name
