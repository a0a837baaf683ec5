"""The curation job: one streaming Ray Data pipeline from the plan to Lance fragments.

    plan (driver) -> unit ranges -> FileStage actors (read their units of the plan; sandboxed
                  per-file work; the models on CPU caption and score; without a GPU model, write)
                  [-> GpuModelStage actors holding the GPUs of curation.scoring.aesthetic_gpus
                      and curation.captioning.gpus: caption, score, write]
                  -> fragment records -> driver: commits them every curation.commit_every_s

The driver plans, commits and reports: media and rows stay in the object store and the
workers, and Ray Data's backpressure keeps a slow stage from flooding it. A killed run
loses at most the work since the last commit (fragments written but never committed are
unreferenced files); the next run plans only the sources the tables do not account for, so
it ends with the same rows as an uninterrupted run and re-running appends nothing. Then
``curation.finalize`` recomputes the decisions over the whole tables and tags the result
for readers.

Every actor declares its memory to Ray (``curation.worker_memory_mb``,
``curation.scoring.aesthetic_memory_mb``), and Ray retries a range whose actor died at most
``curation.max_retries`` times (Ray Data's default is forever: one input that kept killing
its worker would hold the job for ever). A Ray failure that loses work without saying
anything about the inputs (``ray_loss``: a worker killed for memory, a node gone, an object
lost with it) does not fail the job: the driver commits what came back, plans what the
tables do not account for and runs again, ``curation.max_retries`` times, and then writes
what is still undone as retryable rejects, which the next run tries again.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lance
import ray
from lance.fragment import FragmentMetadata
from ray.exceptions import ActorDiedError, NodeDiedError, ObjectLostError, OutOfMemoryError
from tqdm.auto import tqdm

from curation.finalize import committed, finalize
from curation.plan import Plan, unfinished, unit_ranges, write_plan
from curation.sandbox import one_line
from curation.stages import SUMMED, TABLE_SCHEMAS, FileStage, GpuModelStage, lost_rows, write_fragments
from pipeline.config.schema import Config
from pipeline.ray_runtime import cluster_cpus, find_in_chain, init_ray
from pipeline.tables import CURATED_VERSIONS

log = logging.getLogger("curation")
BLOCKS_PER_CPU = 32
# Ranges queued on a file worker at once: one running and one waiting, so a worker never
# idles between units, yet a worker that drew a long unit holds back one range at most
# (Ray Data's default of four let two workers take eight of a small job's ranges).
RANGES_IN_FLIGHT_PER_WORKER = 2
SCORER_BATCH_ROWS = 64  # rows per GPU scorer call (a few keyframe JPEGs each)
MIB = 1 << 20
# Ray failures that lose work without finding a fault in it (ObjectLostError's subclasses
# included; a node's death reaches an actor's caller as ActorDiedError).
LOST_TO_RAY = (OutOfMemoryError, NodeDiedError, ObjectLostError, ActorDiedError)
Take = Callable[[dict[str, Any]], None]  # what the driver does with each fragment record


@dataclass
class Progress:
    """The job's running sums and its throughput per stage, whole and once the workers are up."""

    started: float = field(default_factory=time.monotonic)
    counts: Counter = field(default_factory=Counter)
    first_at: Optional[float] = None  # when the first unit's record came: the workers were up
    at_first: Counter = field(default_factory=Counter)  # the sums as of that record
    ended: Optional[float] = None  # when the pipeline's last record came: finalize is not its work
    cores: int = 0  # the cluster's CPUs, once Ray is up
    # The span of the units' work (time.time(), as the workers stamp a unit's start): from
    # the first unit's start to the last record. A span from the first record would hold
    # less time than the work counted in it: the units in flight then had begun before it.
    counted_from: Optional[float] = None
    counted_to: Optional[float] = None

    def add(self, record: dict[str, Any]) -> None:
        for key in ("clips", "images", "rejects", "files", *SUMMED):
            self.counts[key] += record[key]
        if self.first_at is None:
            self.first_at, self.at_first = time.monotonic(), Counter(self.counts)
        if record["work_started"] is not None:  # None: rows the driver wrote for lost work
            began = record["work_started"]
            self.counted_from = began if self.counted_from is None else min(self.counted_from, began)
            self.counted_to = time.time()

    def end(self) -> None:
        self.ended = time.monotonic()

    def throughput(self) -> dict[str, Optional[float]]:
        now = self.ended or time.monotonic()
        wall = max(now - self.started, 1e-9)
        c = self.counts
        figures: dict[str, Optional[float]] = {
            "wall_s": round(wall, 2),
            "files_per_s": round(c["files"] / wall, 3),
            "video_seconds_per_s": round(c["video_seconds"] / wall, 3),
            "clips_per_s": round(c["clips"] / wall, 3),
            "images_per_s": round(c["images"] / wall, 3),
            # per busy second of each stage's workers: what one more worker would add
            "file_stage_video_seconds_per_worker_s": round(c["video_seconds"] / c["work_s"], 3) if c["work_s"] else 0.0,
            "aesthetic_rows_per_worker_s": round((c["clips"] + c["images"]) / c["aesthetic_s"], 1) if c["aesthetic_s"] else 0.0,
            "captioning_worker_s": round(c["caption_s"], 2),  # the captioner's busy seconds, all workers
        }
        # Start-up (Ray's workers, the sandboxes, the first unit) against the rate after it:
        # what a longer job, or a bigger cluster, would see. None until a second unit ends.
        figures["first_result_s"] = round(self.first_at - self.started, 2) if self.first_at else None
        steady = now - self.first_at if self.first_at and c["files"] > self.at_first["files"] else 0.0
        for key in ("files", "video_seconds", "images"):
            figures[f"steady_{key}_per_s"] = round((c[key] - self.at_first[key]) / steady, 3) if steady else None
        # The share of the cores' time over the units' span that went to anything but the
        # per-file work and the scoring, both counted in CPU seconds where they ran: measured
        # in the same seconds as the job, so a machine whose speed drifts between runs cannot
        # skew it as it skews a comparison with the work timed alone in another run.
        work = c["work_cpu_s"] + c["aesthetic_cpu_s"]
        span = self.counted_to - self.counted_from if self.counted_from is not None else 0.0
        figures["steady_share_outside_work"] = round(1 - work / (span * self.cores), 3) if span > 0 and self.cores else None
        return figures

    def line(self) -> str:
        t = self.throughput()
        return (f"{t['video_seconds_per_s']:.1f} video-s/s, {t['clips_per_s']:.1f} clips/s, "
                f"{t['images_per_s']:.1f} images/s, {self.counts['rejects']} rejects")


class _Committer:
    """Gathers the fragments the workers wrote and appends them, one commit per table."""

    def __init__(self, out: Path, every_s: float) -> None:
        self.out, self.every_s = out, every_s
        self.pending: dict[str, list[str]] = {name: [] for name in TABLE_SCHEMAS}
        self.last = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        for name in TABLE_SCHEMAS:
            self.pending[name] += json.loads(record[f"{name}_fragments"])
        if time.monotonic() - self.last >= self.every_s:
            self.commit()

    def commit(self) -> None:
        for name, fragments in self.pending.items():
            if fragments:
                uri = str(self.out / name)
                metadata = [FragmentMetadata.from_json(f) for f in fragments]
                lance.LanceDataset.commit(uri, lance.LanceOperation.Append(metadata),
                                          read_version=lance.dataset(uri).version)
                self.pending[name] = []
        self.last = time.monotonic()


def _create_tables(out: Path) -> None:
    """Empty tables with their schemas, so the workers' fragments have a dataset to join;
    a folder left by a run killed before its first commit is written afresh."""
    import shutil

    for name, schema in TABLE_SCHEMAS.items():
        uri = out / name
        if committed(uri):
            # Columns added since the table was curated (a reject's retryable: unknown, so
            # never retried; a clip's camera class, text area, fingerprint: not measured)
            # are null in its rows, so this run's fragments fit it.
            ds = lance.dataset(str(uri))
            missing = [f for f in schema if f.name not in ds.schema.names]
            if missing:
                ds.add_columns(missing)
            continue
        shutil.rmtree(uri, ignore_errors=True)
        lance.write_dataset(schema.empty_table(), str(uri), schema=schema)
        (out / CURATED_VERSIONS).unlink(missing_ok=True)  # it named versions of a table now gone


def build_pipeline(plan: Plan, out: Path, config: Config) -> ray.data.Dataset:
    """The job's dataset: ranges of plan units in (the workers read them), fragment records out."""
    cfg = config.curation
    scoring, memory = cfg.scoring, cfg.worker_memory_mb * MIB
    # Ray 2.60 warns that ray_remote_args are deprecated, but max_task_retries has no named
    # parameter yet; without it a range whose actor keeps dying is retried forever.
    retries = cfg.max_retries
    cpus = cluster_cpus()
    # A range per unit while there are few (a few videos spread over all the workers, and
    # each unit's rows are committed as it ends), at most BLOCKS_PER_CPU ranges per core: the
    # driver keeps some state per block (a 100k-input plan in a block per unit took 135 MB
    # more of it than one in 157 blocks), and a worker's records reach it once a block ends.
    ranges = unit_ranges(plan, BLOCKS_PER_CPU * cpus)
    captioning = cfg.captioning
    gpus = max(scoring.aesthetic_gpus, captioning.gpus if captioning.model else 0.0)
    # One range per call. A pool of fixed size starts all its workers at once (an
    # autoscaling one adds them late).
    files = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
        FileStage, fn_constructor_args=(config, str(plan.path), None if gpus else str(out)),
        batch_size=1, batch_format="pyarrow", num_cpus=1, memory=memory, max_task_retries=retries,
        compute=ray.data.ActorPoolStrategy(size=_pool_size(cpus, memory, len(ranges)),
                                           max_tasks_in_flight_per_actor=RANGES_IN_FLIGHT_PER_WORKER))
    if not gpus:
        return files
    # One pool holds every model configured with GPUs, each actor the larger of their GPU
    # shares (both models share its device) and the sum of their memory.
    model_memory = (scoring.aesthetic_memory_mb if scoring.aesthetic_gpus else 0) + (
        captioning.memory_mb if captioning.model and captioning.gpus else 0)
    return files.map_batches(GpuModelStage, fn_constructor_args=(cfg, str(out)), batch_format="pyarrow",
                             batch_size=SCORER_BATCH_ROWS, num_gpus=gpus, num_cpus=0,
                             memory=model_memory * MIB, max_task_retries=retries,
                             compute=ray.data.ActorPoolStrategy(size=scoring.aesthetic_actors))


def _pool_size(cpus: int, memory: int, ranges: int) -> int:
    """File workers to start: one per core and per range, and no more than the cluster's
    memory resource holds at ``memory`` bytes each (one that does not fit would wait for
    memory all job long)."""
    wanted = min(cpus, ranges)
    fits = int(ray.cluster_resources().get("memory", 0) // memory)
    if fits < wanted:
        log.warning("the cluster's memory holds %d file worker(s) at curation.worker_memory_mb=%d, not %d",
                    fits, memory // MIB, wanted)
    return max(1, min(wanted, fits))


def _records(ds: ray.data.Dataset) -> Iterator[dict[str, Any]]:
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield from batch.to_pylist()


def ray_loss(err: BaseException) -> Optional[BaseException]:
    """The Ray failure behind ``err`` (itself, or in its chain: Ray Data wraps what its
    tasks raise) that lost work without finding a fault in it, or None. An actor that died
    starting (a broken install) is no loss: like ``CurationCodeError`` it must stop the job."""
    return find_in_chain(err, LOST_TO_RAY, lambda lost: not getattr(lost, "actor_init_failed", False))


def _run_plan(plan: Plan, out: Path, config: Config, take: Take, committer: _Committer) -> Optional[BaseException]:
    """Run the pipeline over ``plan``, each record to ``take``; returns the Ray loss that
    ended it early, or None once it is done. What came back is committed either way."""
    try:
        for record in _records(build_pipeline(plan, out, config)):
            take(record)
    except Exception as err:
        lost = ray_loss(err)
        if lost is None:
            raise
        return lost
    finally:
        committer.commit()
    return None


def _work(inputs: list[str], plan: Plan, out: Path, config: Config, take: Take, committer: _Committer) -> None:
    """Run the plan; after a Ray loss, plan again what the tables do not account for and
    run that, ``curation.max_retries`` times; then what is still undone becomes retryable
    rejects naming the loss (planned rejects stay themselves)."""
    for attempt in itertools.count(1):
        lost = _run_plan(plan, out, config, take, committer)
        if lost is None:
            return
        if attempt > config.curation.max_retries:
            reason = f"its Ray worker was lost ({one_line(lost)}); the next run tries it again"
            for items in unfinished(plan, out):
                take(write_fragments(lost_rows(items, reason), str(out)).to_pylist()[0])
            committer.commit()
            return
        log.warning("the pipeline lost Ray workers (%s); running what is left again", one_line(lost))
        plan = write_plan(inputs, out, config.curation)
        if not plan.units:  # the loss came after the last unit was back
            return


def curate(inputs: list[str], out_dir: str | Path, config: Config, progress: bool = True) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns (and writes) the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = write_plan(inputs, out, config.curation)
    todo = plan.videos + plan.images
    log.info("%d inputs to do (%d videos; images and input rejects %d) in %d units; %d already curated",
             todo, plan.videos, plan.images, plan.units, plan.skipped)
    _create_tables(out)
    run = Progress()
    if todo:
        init_ray()
        run.cores = cluster_cpus()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job draws its own, with its throughput
        # A range is a few numbers and its media sit on shared storage: a worker near the
        # range's block gains nothing, and preferring them kept a small job on the head node.
        context.execution_options.actor_locality_enabled = False
        committer = _Committer(out, config.curation.commit_every_s)
        bar = tqdm(total=todo, desc="curate", unit="file", disable=not progress)

        def take(record: dict[str, Any]) -> None:
            run.add(record)
            committer.add(record)
            bar.update(record["files"])
            bar.set_postfix_str(run.line(), refresh=False)

        _work(inputs, plan, out, config, take, committer)
        run.end()
        bar.close()
    finalizing = time.monotonic()
    summary = finalize(out, config)
    finalize_s = time.monotonic() - finalizing
    summary["this_run"] = {**{k: run.counts[k] for k in ("clips", "images", "rejects", "files")},
                           "skipped": plan.skipped, "video_seconds": round(run.counts["video_seconds"], 2),
                           "work_s": round(run.counts["work_s"], 2)}
    summary["throughput"] = {**run.throughput(), "finalize_s": round(finalize_s, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
