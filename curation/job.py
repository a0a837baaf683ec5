"""The curation job: inputs -> per-file Ray tasks -> aesthetic actor pool -> Lance tables.

Work is committed in chunks of ``curation.chunk_size`` inputs. Each chunk's rows go through
Ray Data (the aesthetic scorer as an actor pool that may hold a GPU) and are appended with
lance-ray, one commit per table, so a killed run loses at most the chunk in flight. On every
start the job reads which sources the tables already hold and skips them: re-running the
same command appends nothing twice, and a resumed run ends with the same rows as an
uninterrupted one. The keep / drop_reason / weight columns are recomputed over the whole
table at the end of every run from the stored scores and the current thresholds, and the
split column from each row's id and ``curation.val_fraction``.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from curation.decisions import balancing_weights, keep_and_reasons, split_of
from curation.runner import run_items
from curation.sources import InputReject, MediaItem, expand_inputs
from curation.worker import process_item
from pipeline.config.schema import Config
from pipeline.ray_runtime import cluster_cpus, init_ray
from pipeline.tables import (
    CLIPS, CLIPS_SCHEMA, DECISION_FIELDS, IMAGES, IMAGES_SCHEMA, REJECTS, REJECTS_SCHEMA, without_decisions,
)

log = logging.getLogger("curation")

KEYFRAMES = pa.field("keyframes", pa.list_(pa.binary()))
TABLES = {
    "video": (CLIPS, without_decisions(CLIPS_SCHEMA), "clip_id"),
    "image": (IMAGES, without_decisions(IMAGES_SCHEMA), "image_id"),
}


class AestheticStage:
    """Actor for ``map_batches``: scores each row's keyframes, then drops them.

    A class so the (possibly CLIP-sized) model loads once per actor, not once per batch.
    """

    def __init__(self, head_weights: str | None, clip_weights: str | None, device: str) -> None:
        from curation.scorers.aesthetic import build_aesthetic_scorer

        self.scorer = build_aesthetic_scorer(head_weights, clip_weights, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        scores = []
        for frames in batch.column("keyframes").to_pylist():
            images = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])
            scores.append(float(np.mean(self.scorer(images))))
        out = batch.drop_columns(["keyframes"])
        return out.append_column("aesthetic", pa.array(scores, pa.float32()))


def curate(inputs: list[str], out_dir: str | Path, config: Config, progress: bool = True) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns (and writes) the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    cfg = config.curation
    items, source_rejects = expand_inputs(inputs)
    done = _sources_done(out)
    known_ids = {kind: _column(out / uri, key) for kind, (uri, _, key) in TABLES.items()}
    new_rejects = [r for r in source_rejects if r.source not in done]
    todo = [i for i in items if i.uri not in done]
    log.info("%d inputs: %d already curated, %d to do", len(items) + len(source_rejects), len(done), len(todo))
    _append_rejects(out, new_rejects)
    counts: Counter[str] = Counter()
    counts["rejects"] += len(new_rejects)
    results = run_items(todo, process_item, config, cfg.file_timeout_s, cfg.max_retries, 2 * cluster_cpus(), progress)
    chunk: list[dict[str, Any]] = []
    for result in results:
        chunk.append(result)
        if len(chunk) >= cfg.chunk_size:
            _commit(out, chunk, config, known_ids, counts)
            chunk = []
    if chunk:
        _commit(out, chunk, config, known_ids, counts)
    summary = finalize(out, config)
    summary["this_run"] = dict(counts)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _commit(out: Path, chunk: list[dict[str, Any]], config: Config, known_ids: dict[str, set], counts: Counter) -> None:
    """Score aesthetics and append one chunk: rows first, then the rejects."""
    rows: dict[str, list[dict[str, Any]]] = {"video": [], "image": []}
    rejects: list[InputReject] = []
    for result in chunk:
        item: MediaItem = result["item"]
        if "reject" in result:
            stage, reason = result["reject"]
            rejects.append(InputReject(item.uri, item.kind, stage, reason))
            continue
        key = TABLES[item.kind][2]
        if result["rows"][0][key] in known_ids[item.kind]:
            rejects.append(InputReject(item.uri, item.kind, "dedupe", "same content as a file already curated"))
            continue
        known_ids[item.kind].update(r[key] for r in result["rows"])
        rows[item.kind] += result["rows"]
    for kind, kind_rows in rows.items():
        if kind_rows:
            uri, schema, _ = TABLES[kind]
            _write(out / uri, _scored(kind_rows, schema, config), schema)
            counts["clips" if kind == "video" else "images"] += len(kind_rows)
    _append_rejects(out, rejects)
    counts["rejects"] += len(rejects)


def _scored(rows: list[dict[str, Any]], schema: pa.Schema, config: Config) -> ray.data.Dataset:
    scoring = config.curation.scoring
    staged = pa.schema([f for f in schema if f.name != "aesthetic"] + [KEYFRAMES])
    table = pa.Table.from_pylist(rows, schema=staged)
    ds = ray.data.from_arrow(table).repartition(max(1, min(len(rows), scoring.aesthetic_actors * 4)))
    device = "cuda" if scoring.aesthetic_gpus > 0 else "cpu"
    return ds.map_batches(
        AestheticStage,
        fn_constructor_args=(scoring.aesthetic_head, scoring.aesthetic_clip, device),
        batch_format="pyarrow",
        batch_size=16,
        concurrency=scoring.aesthetic_actors,
        num_gpus=scoring.aesthetic_gpus,
    ).map_batches(lambda b: b.select(schema.names).cast(schema), batch_format="pyarrow")


def _committed(uri: Path) -> bool:
    """A Lance table with at least one committed version. A run killed during its very first
    write leaves a folder without ``_versions``: it holds nothing and is written afresh."""
    return (uri / "_versions").is_dir() and any((uri / "_versions").iterdir())


def _write(uri: Path, ds: ray.data.Dataset, schema: pa.Schema) -> None:
    import shutil

    import lance_ray

    if uri.exists() and not _committed(uri):
        shutil.rmtree(uri)
    mode = "append" if _committed(uri) else "create"
    lance_ray.write_lance(ds, str(uri), schema=schema, mode=mode)


def _append_rejects(out: Path, rejects: Iterable[InputReject]) -> None:
    rows = [{"source": r.source, "kind": r.kind, "stage": r.stage, "reason": r.reason} for r in rejects]
    if rows:
        _write(out / REJECTS, ray.data.from_arrow(pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)), REJECTS_SCHEMA)


def _column(uri: Path, name: str) -> set:
    if not _committed(uri):
        return set()
    import lance

    return set(lance.dataset(str(uri)).to_table(columns=[name]).column(name).to_pylist())


def _sources_done(out: Path) -> set[str]:
    return set().union(*(_column(out / uri, "source") for uri in (CLIPS, IMAGES, REJECTS)))


def finalize(out: Path, config: Config) -> dict[str, Any]:
    """Recompute the decision columns for every row, compact, and summarise."""
    import lance

    cfg = config.curation
    summary: dict[str, Any] = {"out": str(out)}
    for kind, (name, _, key) in TABLES.items():
        uri = out / name
        if not _committed(uri):
            continue
        ds = lance.dataset(str(uri))
        score_cols = ["aesthetic", "subject"] + (["motion"] if kind == "video" else [])
        scores = ds.to_table(columns=[key, *score_cols]).to_pandas()
        keep, reasons = keep_and_reasons(scores, cfg.filters)
        weights = balancing_weights(scores, keep, cfg.balance_bins)
        splits = [split_of(row_id, cfg.val_fraction) for row_id in scores[key]]
        decisions = pa.table(
            {
                key: scores[key].to_numpy(),
                "keep": pa.array(keep),
                "drop_reason": pa.array(reasons, pa.string()),
                "weight": pa.array(weights, pa.float32()),
                "split": pa.array(splits, pa.string()),
            }
        )
        stale = [f.name for f in DECISION_FIELDS if f.name in ds.schema.names]
        if stale:
            ds.drop_columns(stale)
            ds = lance.dataset(str(uri))
        ds.merge(decisions, left_on=key)
        ds = lance.dataset(str(uri))
        ds.optimize.compact_files()
        dropped = Counter(r.split(" ")[0] for r in reasons if r)
        summary["clips" if kind == "video" else "images"] = {
            "rows": len(scores),
            "kept": int(keep.sum()),
            "kept_val": sum(1 for k, s in zip(keep, splits) if k and s == "val"),
            "dropped_by": dict(dropped),
        }
    if _committed(out / REJECTS):
        stages = lance.dataset(str(out / REJECTS)).to_table(columns=["stage"]).column("stage").to_pylist()
        summary["rejects"] = {"rows": len(stages), "by_stage": dict(Counter(stages))}
    return summary
