"""Connecting to Ray: the cluster a job was submitted to, ``RAY_ADDRESS``, or a local one.

Every stage calls ``init_ray()``; on a laptop it starts the embedded local cluster, under
``ray job submit`` it joins the job's cluster, and it is a no-op when Ray is already up.

Authentication is Ray's: a new embedded cluster requires a token (Ray 2.60's default for
``ray.init``, which creates ``~/.ray/auth_token`` on first use), and a driver started by
``ray job submit`` inherits its cluster's mode and token. Nothing here turns it off.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import ray

# Set for every worker of a local cluster: Lance sizes its thread pool to the machine, which
# oversubscribes when many Ray workers each open a dataset; no hub lookups, ever. They go in
# the driver's environment, which the local cluster's workers inherit, not in a job-level
# runtime_env: with one, every worker start waits on the runtime-env agent (an actor took
# 2.1-2.4 s to start on a 2-core node, 0.5-1.1 s without).
WORKER_ENV = {"LANCE_CPU_THREADS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start an embedded one with ``num_cpus`` CPUs."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def find_in_chain(
    err: BaseException, kinds: tuple[type[BaseException], ...], accept: Callable[[BaseException], bool] = lambda e: True
) -> Optional[BaseException]:
    """The first exception of ``kinds`` that ``accept`` takes, in ``err`` or anything it
    wraps: its cause, its context, and the ``cause`` Ray's errors carry (Ray Data and Serve
    report a dead task or actor as their own exception, with the death behind it)."""
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, kinds) and accept(current):
            return current
        seen.add(id(current))
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None
