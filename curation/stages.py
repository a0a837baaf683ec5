"""The pipeline's stages, as Ray Data runs them: callable classes for ``map_batches``.

    models on CPU:  unit ranges --FileStage (read plan, work, caption, score, write)--> fragment records
    a model on GPU: unit ranges --FileStage (read plan, work[, CPU models])--> staged rows
                    --GpuModelStage (caption and/or score, write)--> records

On CPU the aesthetic scorer, and the captioner when ``curation.captioning.model`` names one,
run inside each file worker (loaded once per actor): a separate CPU pool would take a core
from the per-file work and copy every keyframe through the object store. A model configured
with GPUs (``curation.scoring.aesthetic_gpus``, ``curation.captioning.gpus``) runs in a pool
of its own that holds the GPUs, fed by all the file workers. The rows between stages share one
Arrow schema, ``STAGED_SCHEMA``: the union of the clip, image and
reject columns, plus ``table`` (which table a row goes to), the keyframes the aesthetic
scorer and the captioner read, and per-row work figures that the driver sums into
throughput. One schema lets the three kinds of row flow through one streaming pipeline, and
Arrow stores the columns a row does not use as nulls at no cost. The last stage writes Lance
fragments from the worker and returns only their metadata, so media never reach the driver.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterator, Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from curation.keyframes import decode_jpeg
from curation.plan import read_units
from curation.sandbox import Outcome, Sandbox
from curation.sources import MediaItem
from pipeline.allocator import keep_freed_memory
from pipeline.config.schema import CaptioningConfig, Config, CurationConfig, ScoringConfig
from pipeline.tables import (
    CLIP_EMBEDDING, CLIPS, CLIPS_SCHEMA, IMAGES, IMAGES_SCHEMA, REJECTS, REJECTS_SCHEMA, without_decisions,
)

log = logging.getLogger("curation")

# Table name -> the schema its fragments are written with (decisions come at finalize).
TABLE_SCHEMAS = {
    CLIPS: without_decisions(CLIPS_SCHEMA),
    IMAGES: without_decisions(IMAGES_SCHEMA),
    REJECTS: REJECTS_SCHEMA,
}
WORK_FIELDS = [
    pa.field("table", pa.string()),
    pa.field("keyframes", pa.list_(pa.binary())),
    pa.field("files", pa.int32()),  # 1 on the first row of each input, else 0
    pa.field("video_seconds", pa.float64()),  # the input's length, on its first row
    pa.field("work_s", pa.float64()),  # the input's work in its sandbox, on its first row
    pa.field("work_cpu_s", pa.float64()),  # the same in the sandbox's CPU seconds
    pa.field("aesthetic_s", pa.float64()),  # the scorer's time for a batch, on its first row
    pa.field("aesthetic_cpu_s", pa.float64()),  # the same in the scoring process's CPU seconds
    pa.field("caption_s", pa.float64()),  # the captioner's time for a batch, on its first row
    # when the row's unit began its work (time.time(), every row): the writer keeps the
    # earliest, so the driver knows the span in which the work it counts was done
    pa.field("work_started", pa.float64()),
]
# The per-input and per-batch figures the writer sums and the driver adds up.
SUMMED = ("video_seconds", "work_s", "work_cpu_s", "aesthetic_s", "aesthetic_cpu_s", "caption_s")


def _union(*schemas: pa.Schema) -> pa.Schema:
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for f in schema:
            fields.setdefault(f.name, f)
    return pa.schema(list(fields.values()))


STAGED_SCHEMA = _union(*TABLE_SCHEMAS.values(), pa.schema(WORK_FIELDS))
# What the writer returns per batch: fragment metadata and sums, nothing per row.
WRITTEN_SCHEMA = pa.schema(
    [pa.field(f"{name}_fragments", pa.string()) for name in TABLE_SCHEMAS]
    + [pa.field(name, pa.int64()) for name in ("clips", "images", "rejects", "files")]
    + [pa.field(name, pa.float64()) for name in (*SUMMED, "work_started")]
)


def _staged(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=STAGED_SCHEMA)


def _item(row: dict[str, Any]) -> MediaItem:
    return MediaItem(row["source"], row["kind"], row["caption"], row["caption_uri"])


class FileStage:
    """Per-file work (probe, analysis, split, clip encoding; an image's decode and scores)
    for ranges of the plan's units, each input in the actor's sandboxed child process. With
    ``out`` it also scores and writes, and returns fragment records. It reads its ranges
    from the plan itself: a read task ahead of it took 5 s to start on a 2-core node."""

    def __init__(self, config: Config, plan: str, out: Optional[str]) -> None:
        # One worker per core is the parallelism: OpenCV's thread pool on top of it made every
        # process wait on the others' threads (an image alone used 1.3 cores).
        cv2.setNumThreads(1)
        keep_freed_memory()  # the inputs' bytes arrive here too, a buffer each (pipeline.allocator)
        self.sandbox = Sandbox(config)
        self.sandbox.start()  # its imports overlap the models' loading and Ray's start-up
        self.plan, self.out = plan, out
        curation = config.curation
        self.scorer = _scorer(curation.scoring, "cpu") if not curation.scoring.aesthetic_gpus else None
        self.captioner = _captioner(curation.captioning, "cpu") if not curation.captioning.gpus else None

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        """One output per unit of the batch's ranges: a range can hold many videos, and a
        worker holds one unit's rows (a video's clips) at a time."""
        for start, stop in zip(batch.column("start").to_pylist(), batch.column("stop").to_pylist()):
            for unit in read_units(self.plan, start, stop):
                started = time.time()
                rows = [{**row, "work_started": started} for row in self._unit_rows(unit)]
                staged = _with_models(_staged(rows), self.captioner, self.scorer)
                yield write_fragments(staged, self.out) if self.out else staged

    def _unit_rows(self, unit: list[dict[str, Any]]) -> list[dict[str, Any]]:
        to_work = [p for p in unit if p["reject_stage"] is None]
        worked = iter(self.sandbox.run_all([(_item(p), p["attempts"] or 0) for p in to_work]))
        rows: list[dict[str, Any]] = []
        for planned in unit:
            rows += _outcome_rows(planned, _planned_reject(planned) or next(worked))
        return rows

    def __del__(self) -> None:
        self.sandbox.close()


def _scorer(scoring: ScoringConfig, device: str) -> Any:
    from curation.scorers.aesthetic import build_aesthetic_scorer

    return build_aesthetic_scorer(scoring.aesthetic_head, scoring.aesthetic_clip, device)


def _captioner(captioning: CaptioningConfig, device: str) -> Optional[Any]:
    """The captioning stage for ``captioning.model``, or None when no model is configured."""
    if not captioning.model:
        return None
    from curation.captioner import CaptionStage

    return CaptionStage(captioning.model, captioning.prompt, device, captioning.max_new_tokens,
                        captioning.batch_size, captioning.recaption, captioning.dtype)


def _with_models(batch: pa.Table, captioner: Optional[Any], scorer: Optional[Any]) -> pa.Table:
    """The batch captioned (where a row needs it) and scored, by whichever models this
    process holds; both read the keyframes, which the writer leaves out."""
    if captioner is not None:
        batch = captioner(batch)
    return score(scorer, batch) if scorer is not None else batch


def _planned_reject(planned: dict[str, Any]) -> Optional[Outcome]:
    """The outcome of an input the plan rejects already (a missing path, an unusable
    manifest row), or None for one to work on."""
    if planned["reject_stage"] is None:
        return None
    return Outcome([], reject=(planned["reject_stage"], planned["reject_reason"]))


def lost_rows(items: list[dict[str, Any]], reason: str) -> pa.Table:
    """Staged reject rows for planned items whose work was lost with its Ray worker: each a
    retryable ``worker`` reject (the next run tries it again), a planned reject as itself."""
    rows: list[dict[str, Any]] = []
    for planned in items:
        lost = Outcome([], reject=("worker", reason), retryable=True, attempts=(planned["attempts"] or 0) + 1)
        rows += _outcome_rows(planned, _planned_reject(planned) or lost)
    return _staged(rows)


def _outcome_rows(planned: dict[str, Any], outcome: Outcome) -> list[dict[str, Any]]:
    figures = {"files": 1, "video_seconds": outcome.video_seconds, "work_s": outcome.work_s,
               "work_cpu_s": outcome.work_cpu_s}
    if outcome.reject is not None:
        stage, reason = outcome.reject
        return [{"table": REJECTS, "source": planned["source"], "kind": planned["kind"], "stage": stage,
                 "reason": reason, "retryable": outcome.retryable, "attempts": outcome.attempts, **figures}]
    table = CLIPS if planned["kind"] == "video" else IMAGES
    rows = [{**row, "table": table} for row in outcome.rows]
    rows[0].update(figures)
    return rows


class GpuModelStage:
    """The GPU pool: the models configured with GPUs (the aesthetic scorer with
    ``scoring.aesthetic_gpus``, the captioner with ``captioning.gpus``) caption and score the
    staged rows, and the rows are written. A class so the (possibly CLIP- or BLIP-sized)
    models load once per actor, which lives for the whole job."""

    def __init__(self, curation: CurationConfig, out: str) -> None:
        device = _gpu_device()
        self.scorer = _scorer(curation.scoring, device) if curation.scoring.aesthetic_gpus else None
        self.captioner = _captioner(curation.captioning, device) if curation.captioning.gpus else None
        self.out = out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return write_fragments(_with_models(batch, self.captioner, self.scorer), self.out)


def _gpu_device() -> str:
    """The GPU pool's device: CUDA, or the CPU, with a warning, where the actor sees no CUDA
    device although Ray gave it a GPU share (a cluster that declares GPUs it lacks, as
    ``ray start --num-gpus`` allows): the job then runs slowly instead of failing."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    log.warning("the GPU model pool sees no CUDA device (Ray assigned GPU ids %s): its models run on the CPU",
                ray.get_gpu_ids())
    return "cpu"


def score(scorer: Any, batch: pa.Table) -> pa.Table:
    """The batch with each media row's aesthetic score, its CLIP embedding when the scorer
    has one (the LAION scorer; the weight-free one leaves it null), and the time scoring
    took in wall and CPU seconds (on the first row); rejects pass through unscored."""
    started, started_cpu = time.monotonic(), time.process_time()
    scores: list[Optional[float]] = []
    embeddings: list[Optional[np.ndarray]] = []
    for frames in batch.column("keyframes").to_pylist():
        row_score, embedding = _score_row(scorer, frames) if frames else (None, None)
        scores.append(row_score)
        embeddings.append(embedding)
    batch = _set(batch, "aesthetic", pa.array(scores, pa.float32()))
    batch = _set(batch, "clip_embedding", pa.array(embeddings, CLIP_EMBEDDING))
    for name, seconds in (("aesthetic_s", time.monotonic() - started),
                          ("aesthetic_cpu_s", time.process_time() - started_cpu)):
        spent = [seconds] + [0.0] * (batch.num_rows - 1) if batch.num_rows else []
        batch = _set(batch, name, pa.array(spent, pa.float64()))
    return batch


def _score_row(scorer: Any, keyframes: list[bytes]) -> tuple[float, Optional[np.ndarray]]:
    """A row's aesthetic (the mean over its keyframes) and, from a scorer that embeds (the
    LAION one; the weight-free one returns None), its CLIP embedding: the keyframes' mean
    direction, so that a clip is one vector to compare (CLIP's image embeddings share a
    narrow cone, so the mean never vanishes)."""
    frame_scores, frame_embeddings = scorer.scores_and_embeddings(np.stack([decode_jpeg(f) for f in keyframes]))
    if frame_embeddings is None:
        return float(np.mean(frame_scores)), None
    mean = frame_embeddings.mean(axis=0)
    return float(np.mean(frame_scores)), mean / np.linalg.norm(mean)


def _set(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return batch.set_column(batch.schema.get_field_index(name), name, values)


def write_fragments(batch: pa.Table, out: str) -> pa.Table:
    """Write each table's rows of the batch as Lance fragments in the worker; return their
    metadata (JSON) and the batch's sums, for the driver to commit and report."""
    from lance.fragment import write_fragments as write

    record: dict[str, Any] = {}
    for name, schema in TABLE_SCHEMAS.items():
        part = batch.filter(pc.equal(batch.column("table"), name)).select(schema.names).cast(schema)
        record[name.split(".")[0]] = part.num_rows
        fragments = write(part, f"{out}/{name}", schema=schema) if part.num_rows else []
        record[f"{name}_fragments"] = json.dumps([json.dumps(f.to_json()) for f in fragments])
    for name in ("files", *SUMMED):
        record[name] = pc.sum(batch.column(name)).as_py() or 0
    record["work_started"] = pc.min(batch.column("work_started")).as_py()  # None for lost rows
    return pa.Table.from_pylist([record], schema=WRITTEN_SCHEMA)
