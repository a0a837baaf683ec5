"""Run one Ray task per input with a time limit, retries, and no way for one file to fail
the job.

A decoder that aborts kills its worker process: Ray retries the task (``max_retries``) and
after the last try the file becomes a reject ("worker crashed"). A decoder that hangs holds
its worker forever: past ``timeout_s`` the task is force-cancelled and the file becomes a
reject ("timed out"). Any other exception in our own code becomes a reject that quotes it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayTaskError, TaskCancelledError, WorkerCrashedError
from tqdm.auto import tqdm

from curation.sources import MediaItem


def run_items(
    items: list[MediaItem],
    fn: Callable[[MediaItem, Any], dict[str, Any]],
    config: Any,
    timeout_s: float,
    max_retries: int,
    max_in_flight: int,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield ``fn(item, config)`` results as tasks finish, or ``{"item", "reject"}`` records."""
    task = ray.remote(fn).options(max_retries=max_retries, retry_exceptions=False, num_cpus=1)
    config_ref = ray.put(config)
    queue = list(reversed(items))
    running: dict[ray.ObjectRef, tuple[MediaItem, float]] = {}
    bar = tqdm(total=len(items), desc="curate", unit="file", disable=not progress)
    while queue or running:
        while queue and len(running) < max_in_flight:
            item = queue.pop()
            running[task.remote(item, config_ref)] = (item, time.monotonic())
        done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in done:
            item, _ = running.pop(ref)
            bar.update(1)
            yield _result(ref, item)
        now = time.monotonic()
        for ref, (item, started) in list(running.items()):
            if now - started > timeout_s:
                ray.cancel(ref, force=True)
                running.pop(ref)
                bar.update(1)
                yield {"item": item, "reject": ("worker", f"timed out after {timeout_s:g} s (decoder hung?)")}
    bar.close()


def _result(ref: ray.ObjectRef, item: MediaItem) -> dict[str, Any]:
    try:
        return ray.get(ref, timeout=60)
    except WorkerCrashedError:
        return {"item": item, "reject": ("worker", "worker crashed on this file (decoder abort?) after all retries")}
    except TaskCancelledError:
        return {"item": item, "reject": ("worker", "task cancelled")}
    except RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        return {"item": item, "reject": ("worker", f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}")}
    except GetTimeoutError:
        return {"item": item, "reject": ("worker", "result could not be fetched")}
