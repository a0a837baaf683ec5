"""The driver's plan: which inputs this run works on, written to Parquet for the workers.

The driver lists folders and globs, streams manifests a batch at a time, drops the sources
the tables already account for (clips, images, and terminal rejects), and writes what is left
to ``<out>/_plan/`` as units of work: one video, or up to ``curation.images_per_task`` small
inputs (images, and inputs that are rejects already), so an image costs its own decode and
score rather than a task. The pipeline hands the workers ranges of units (``unit_ranges``),
and each worker reads its range from the plan itself (``read_units``), so neither a manifest
of millions of rows nor the work on it is ever held by the driver. Inputs that name
nothing (a missing path, an unusable manifest row) are planned as rejects and written by the
workers with everything else. A source whose last reject was retryable is planned again
with its earlier attempts counted.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.finalize import committed
from curation.sources import InputReject, MediaItem, manifest_entries, scan_inputs
from pipeline.config.schema import CurationConfig
from pipeline.tables import CLIPS, IMAGES, REJECTS

ITEM = pa.struct(
    [
        pa.field("source", pa.string()),
        pa.field("kind", pa.string()),  # video | image | the input kind of a planned reject
        pa.field("caption", pa.string()),
        pa.field("caption_uri", pa.string()),
        pa.field("reject_stage", pa.string()),  # set: the input is a reject already
        pa.field("reject_reason", pa.string()),
        pa.field("attempts", pa.int32()),  # tries in earlier runs
    ]
)
PLAN_SCHEMA = pa.schema([pa.field("items", pa.list_(ITEM))])  # one row per unit of work
FLUSH_ITEMS = 8192


@dataclass
class Plan:
    """Where the plan lies and how much it holds."""

    folder: Path
    images_per_task: int
    videos: int = 0
    images: int = 0  # images and planned rejects: both are cheap, batched work
    units: int = 0
    skipped: int = 0  # already accounted for by the tables

    @property
    def path(self) -> Path:
        return self.folder / "units.parquet"


class DoneSources:
    """The sources the tables account for, as Arrow arrays (compact, vectorised lookups),
    and the earlier attempts of those whose last reject was retryable. A retryable reject
    accounts for its source only with ``every_reject`` (what a lost pipeline left undone is
    what no table names at all)."""

    def __init__(self, out: Path, every_reject: bool = False) -> None:
        import lance

        done: list[pa.Array] = []
        for name in (CLIPS, IMAGES):
            if committed(out / name):
                done.append(lance.dataset(str(out / name)).to_table(columns=["source"]).column("source").combine_chunks())
        self.retry_attempts: dict[str, int] = {}
        if committed(out / REJECTS):
            rejects = lance.dataset(str(out / REJECTS)).to_table(columns=["source", "retryable", "attempts"])
            retryable = rejects.column("retryable").fill_null(False)
            counted = rejects if every_reject else rejects.filter(pc.invert(retryable))
            done.append(counted.column("source").combine_chunks())
            again = rejects.filter(retryable)
            for source, attempts in zip(again.column("source").to_pylist(), again.column("attempts").to_pylist()):
                self.retry_attempts[source] = max(attempts or 0, self.retry_attempts.get(source, 0))
        self.sources = pc.unique(pa.concat_arrays(done)) if done else pa.array([], pa.string())

    def fresh(self, items: list[dict]) -> list[dict]:
        """The planned items whose sources the tables do not account for."""
        sources = pa.array([i["source"] for i in items], pa.string())
        new = pc.invert(pc.is_in(sources, value_set=self.sources)).to_pylist()
        return [item for item, keep in zip(items, new) if keep]


class _PlanWriter:
    """Buffers planned items, drops the done ones, and writes them as units of work."""

    def __init__(self, plan: Plan, done: DoneSources) -> None:
        self.plan, self.done = plan, done
        self.items: list[dict] = []
        self.small: list[dict] = []  # fresh small items waiting to fill a unit
        self.writer: Optional[pq.ParquetWriter] = None

    def add(self, entry: MediaItem | InputReject) -> None:
        if isinstance(entry, MediaItem):
            row = {"source": entry.uri, "kind": entry.kind, "caption": entry.caption, "caption_uri": entry.caption_uri}
        else:
            row = {"source": entry.source, "kind": entry.kind, "reject_stage": entry.stage, "reject_reason": entry.reason}
        row["attempts"] = self.done.retry_attempts.get(row["source"], 0)
        self.items.append(row)
        if len(self.items) >= FLUSH_ITEMS:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._write_units([self.small] if self.small else [])
        if self.writer is not None:
            self.writer.close()

    def _flush(self) -> None:
        if not self.items:
            return
        fresh = self.done.fresh(self.items)
        self.plan.skipped += len(self.items) - len(fresh)
        self.items = []
        units = []
        for item in fresh:
            if item["kind"] == "video" and item.get("reject_stage") is None:
                units.append([item])
                self.plan.videos += 1
                continue
            self.small.append(item)
            self.plan.images += 1
            if len(self.small) >= self.plan.images_per_task:
                units.append(self.small)
                self.small = []
        self._write_units(units)

    def _write_units(self, units: list[list[dict]]) -> None:
        if not units:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.plan.path, PLAN_SCHEMA)
        self.writer.write_table(pa.Table.from_pylist([{"items": u} for u in units], schema=PLAN_SCHEMA))
        self.plan.units += len(units)


def write_plan(inputs: list[str], out: Path, cfg: CurationConfig) -> Plan:
    """List and stream the inputs into ``out/_plan``; a manifest's entry wins over the same
    file found by a folder scan (it has the caption)."""
    plan = Plan(out / "_plan", cfg.images_per_task)
    shutil.rmtree(plan.folder, ignore_errors=True)
    plan.folder.mkdir(parents=True)
    writer = _PlanWriter(plan, DoneSources(out))
    scan = scan_inputs(inputs, cfg)
    for reject in scan.rejects:
        writer.add(reject)
    for fs, path in scan.manifests:
        for entry in manifest_entries(fs, path, scan.roots):
            if isinstance(entry, MediaItem):
                scan.media.pop(entry.uri, None)
            writer.add(entry)
    for item in scan.media.values():
        writer.add(item)
    writer.close()
    return plan


def unit_ranges(plan: Plan, parts: int) -> list[dict[str, int]]:
    """``[start, stop)`` ranges of the plan's units: ``parts`` of them, or one per unit when
    there are fewer, sizes differing by at most one unit."""
    count = min(plan.units, parts)
    bounds = [plan.units * k // count for k in range(count + 1)]
    return [{"start": a, "stop": b} for a, b in zip(bounds, bounds[1:])]


def read_units(path: str, start: int, stop: int) -> list[list[dict]]:
    """Units ``[start, stop)`` of the plan at ``path``: only the row groups that hold them
    are read, so a worker's cost does not grow with the plan."""
    plan = pq.ParquetFile(path)
    groups, first_row, offset = [], None, 0
    for group in range(plan.num_row_groups):
        rows = plan.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            groups.append(group)
            first_row = offset if first_row is None else first_row
        offset += rows
    if not groups:
        return []
    table = plan.read_row_groups(groups, columns=["items"])
    return table.slice(start - first_row, stop - start).column("items").to_pylist()


def unfinished(plan: Plan, out: Path) -> Iterator[list[dict]]:
    """The plan's items that no table names yet, not even with a retryable reject (what a
    pipeline that lost its Ray workers left undone), a row group of units at a time."""
    done = DoneSources(out, every_reject=True)
    units_per_batch = max(1, FLUSH_ITEMS // plan.images_per_task)
    for batch in pq.ParquetFile(plan.path).iter_batches(batch_size=units_per_batch, columns=["items"]):
        items = [item for unit in batch.column("items").to_pylist() for item in unit]
        if fresh := done.fresh(items):
            yield fresh
