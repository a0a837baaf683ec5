"""A real multi-node Ray cluster on one machine: ``ray start`` a head and a worker node on
127.0.0.1, for the tests and benchmarks that check what only a cluster shows (tasks placed
on both nodes, nothing passed through the driver's memory) and for users who want to try
the cluster path before they have one.

Every port is chosen free and distinct, so the cluster never collides with itself, the
caller's own Ray or another cluster, and each node runs in its own process group: leaving
the context stops the nodes and all their workers, and nothing else.

The cluster requires Ray's token authentication with a token of its own (nothing is
written to ``~/.ray``), unless the caller's environment chose a mode itself (the test
suite turns it off). Ray 2.60 turns a head node's auth on when it finds a token, but not a
worker node's, nor a driver's that joins by address, so the nodes and ``LocalCluster.env``
carry the mode as well as the token; ``LocalCluster.state`` and ``headers`` authenticate
the caller's own requests to the dashboard.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LocalCluster:
    dashboard: str  # http://127.0.0.1:port: ``ray job submit --address``, the state API
    gcs: str  # 127.0.0.1:port: ``RAY_ADDRESS`` for a driver that joins the cluster
    env: dict[str, str]  # the nodes' environment (PATH reaches this interpreter; the token): a driver's too
    token: str  # the cluster's authentication token

    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate a request to the dashboard (jobs, state API)."""
        return {"Authorization": f"Bearer {self.token}"}

    def state(self, resource: str, **options: Any) -> list:
        """``ray.util.state.list_<resource>(**options)`` for this cluster ("nodes", "tasks",
        ...), authenticated with its token whatever auth mode this process runs in."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(address=self.dashboard, headers=self.headers())
        return client.list(StateResource(resource), options=ListApiOptions(**options), raise_on_missing_output=True)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


# The ports every node listens on besides the head's own (GCS, dashboard, client server).
NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port")


def _start(args: list[str], ports: list[int], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group: one signal stops the node and its workers."""
    chosen = [f"--{name}={port}" for name, port in zip(NODE_PORTS, ports, strict=True)]
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args, *chosen],
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


def _wait_for(ready: Callable[[], bool], log: Path) -> None:
    from ray.util.state.exception import RayStateApiException

    deadline, last = time.monotonic() + START_TIMEOUT_S, "none"
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except RayStateApiException as err:  # the dashboard is not up yet: its state API refuses
            last = f"{type(err).__name__}: {err}"
        time.sleep(1)
    raise RuntimeError(f"the Ray node did not come up in {START_TIMEOUT_S:g} s (last state API error: "
                       f"{last[:300]}):\n{log.read_text()[-3000:]}")


@contextmanager
def local_cluster(logs: Path, cpus_per_node: int = 2, worker_resources: str = "{}") -> Iterator[LocalCluster]:
    """A head and one worker node, ``cpus_per_node`` CPUs each; the worker node also has the
    custom resources in ``worker_resources`` (JSON). Node logs go to ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # One call picks every port of the cluster, so no two coincide: ports picked in separate
    # calls can (the socket of an earlier pick is closed again), and a head given its GCS port
    # twice does not start (CI saw dashboard_agent_http land on the GCS port).
    gcs, dashboard, client, *node_ports = free_ports(3 + 2 * len(NODE_PORTS))
    head_ports, worker_ports = node_ports[:len(NODE_PORTS)], node_ports[len(NODE_PORTS):]
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # a job's `python`
    env.setdefault("RAY_AUTH_MODE", "token")
    env["RAY_AUTH_TOKEN"] = token
    started = [_start(["--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--dashboard-port={dashboard}",
                       "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
                       f"--num-cpus={cpus_per_node}", f"--temp-dir={temp_dir}"], head_ports, env, logs / "head.log")]
    cluster = LocalCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, token)
    try:
        _wait_for(lambda: len(cluster.state("nodes")) >= 1, logs / "head.log")
        started.append(_start([f"--address={cluster.gcs}", "--node-ip-address=127.0.0.1",
                               f"--num-cpus={cpus_per_node}", f"--resources={worker_resources}"],
                              worker_ports, env, logs / "worker.log"))
        _wait_for(lambda: sum(n.state == "ALIVE" for n in cluster.state("nodes")) == 2,
                  logs / "worker.log")
        yield cluster
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
