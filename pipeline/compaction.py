"""Compacting a Lance table of media without the driver reading the media.

Lance's ``compact_files`` rewrites a table's small fragments in the process that calls it.
On a 12,000-image table of blobs (47 fragments, 142 MB) that took 2.1-2.5 s in curation's driver,
about 60 MB/s (most of it kernel time: Lance wrote the blob column in 53,000 writes), so a
35M-clip corpus of a few MB per clip would pass tens of terabytes through one process. Here
the driver only plans (``Compaction.plan``) and commits (``Compaction.commit``); the plan's
tasks, each one new fragment, run as Ray tasks on the cluster's workers, which read and
write the media where they lie, spread over the nodes (each task's I/O is its node's disk
and network, not the driver's). A plan under ``in_process_bytes`` runs where it is called:
starting Ray workers for it costs more than the rewrite (a small job's finalize waited 2.0
s for the workers of two one-off tasks).

Fragments are sized by bytes: ``TARGET_FRAGMENT_BYTES`` of the table's mean row. Lance's
default target of 1M rows would make a fragment of 2 MB clips a 2 TB file, and leave every
fragment under that size a candidate, to be rewritten again by every later run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lance
from lance.optimize import Compaction, CompactionTask, RewriteResult

log = logging.getLogger(__name__)

TARGET_FRAGMENT_BYTES = 512 << 20
IN_PROCESS_BYTES = 256 << 20
LANCE_TARGET_ROWS = 1 << 20  # Lance's own default, the most rows a fragment is given here
# What a task reads at once: batches of about BATCH_BYTES of the mean row (at most Lance's
# 1,024-row groups), through an I/O buffer of IO_BUFFER_BYTES. With Lance's defaults, 960
# MB of 4 MB values took 1.4 GB of memory to compact as a plain column and 430 MB as blobs;
# with these, 470 MB and 240 MB, and the blobs took 1.4 s instead of 8.4 s (one run each;
# the plain column's times varied 4-16 s). A value larger than the buffer still passes (a
# 4 MB value through a 1 MB buffer did).
BATCH_BYTES = 16 << 20
MAX_BATCH_ROWS = 1024
IO_BUFFER_BYTES = 64 << 20


@dataclass
class Compacted:
    """What ``compact`` did: the plan's tasks, where they ran (``ray`` or ``here``) and on
    how many nodes, the bytes they read, and the fragments before and after."""

    tasks: int = 0
    where: str = "here"
    nodes: int = 1
    bytes_read: int = 0
    fragments_removed: int = 0
    fragments_added: int = 0


def compaction_options(ds: lance.LanceDataset) -> dict[str, Any]:
    """Lance's compaction options for ``ds``: fragments of ``TARGET_FRAGMENT_BYTES`` worth of
    its mean row (at most Lance's 1M rows), read ``BATCH_BYTES`` at a time."""
    fragments = [f.metadata for f in ds.get_fragments()]
    rows = sum(f.physical_rows or 0 for f in fragments)
    size = sum(d.file_size_bytes or 0 for f in fragments for d in f.files)

    def rows_in(nbytes: int, most: int) -> int:
        return max(1, min(most, most if not rows or not size else nbytes * rows // size))

    return {"target_rows_per_fragment": rows_in(TARGET_FRAGMENT_BYTES, LANCE_TARGET_ROWS),
            "batch_size": rows_in(BATCH_BYTES, MAX_BATCH_ROWS), "io_buffer_size": IO_BUFFER_BYTES}


def compact(uri: str | Path, in_process_bytes: int = IN_PROCESS_BYTES) -> Compacted:
    """Merge the table's small fragments (and drop its deleted rows): in Ray tasks when Ray
    runs and the plan reads at least ``in_process_bytes``, else here."""
    import ray

    ds = lance.dataset(str(uri))
    options = compaction_options(ds)
    plan = Compaction.plan(ds, options)
    tasks = list(plan.tasks)
    if not tasks:
        return Compacted()
    # A data file whose size Lance did not record counts as 0 bytes: such a plan stays here.
    planned = sum(d.file_size_bytes or 0 for task in tasks for f in task.fragments for d in f.files)
    if ray.is_initialized() and planned >= in_process_bytes:
        rewrite = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_rewrite)
        done = ray.get([rewrite.remote(str(uri), t.json()) for t in tasks])
        results = [RewriteResult.from_json(result) for result, _ in done]
        where, nodes = "ray", len({node for _, node in done})
    else:
        results = [task.execute(ds) for task in tasks]
        where, nodes = "here", 1
    metrics = Compaction.commit(ds, results)
    log.info("compacted %s: %d fragments into %d, %.0f MB read, %d task(s) %s on %d node(s)", Path(uri).name,
             metrics.fragments_removed, metrics.fragments_added, planned / 2**20, len(tasks), where, nodes)
    return Compacted(len(tasks), where, nodes, planned, metrics.fragments_removed, metrics.fragments_added)


def _rewrite(uri: str, task: str) -> tuple[str, str]:
    """One compaction task, on a worker: its new fragment written; its result for the
    commit, and the node it ran on."""
    import ray

    job = CompactionTask.from_json(task)
    result = job.execute(lance.dataset(uri, version=job.read_version)).json()
    return result, ray.get_runtime_context().get_node_id()
