"""Work split over one process per shard, timed from the moment every process is ready.

What a machine delivers with every core on one kind of work is the figure a cluster's
throughput follows (its nodes run a worker per core), and it is not the one-process figure
times the cores: a decoder that spreads over idle cores alone gains nothing when every core
is taken, and a shared virtual machine's cores need not add up (two busy loops on the
2-core one here ran at 1.75x one). The benchmarks measure it this way.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

# A task: ``task(shard, ready)`` sets itself up, calls ``ready()``, then does the timed work
# and returns what it measured. Module-level, so that a spawned process can import it.
Task = Callable[[Any, Callable[[], None]], Any]

_barrier = None


def _share_barrier(barrier) -> None:
    global _barrier
    _barrier = barrier


def _timed(task: Task, shard: Any) -> tuple[float, float, Any]:
    started = []

    def ready() -> None:
        _barrier.wait()
        started.append(time.time())

    result = task(shard, ready)
    if not started:
        raise RuntimeError(f"{task.__name__} returned without calling ready()")
    return started[0], time.time(), result


def run_together(task: Task, shards: list[Any]) -> tuple[float, list[Any]]:
    """Run ``task`` on each shard in a process of its own, all released together once every
    one has called ``ready()`` (imports and set-up stay outside the timing): the wall
    seconds from that moment to the end of the last, and each task's result."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(shards))
    with ProcessPoolExecutor(len(shards), mp_context=context, initializer=_share_barrier,
                             initargs=(barrier,)) as pool:
        spans = list(pool.map(_timed, [task] * len(shards), shards))
    return max(end for _, end, _ in spans) - min(start for start, _, _ in spans), [result for _, _, result in spans]
