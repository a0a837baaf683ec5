"""The end of every curation run, over the whole tables: duplicates out, superseded rejects
out, decisions recomputed, small fragments compacted, and the result tagged for readers.

Each step is idempotent and starts from what the tables hold, so a run killed anywhere in
here is repaired by the next run's finalize. Readers never see the steps in between: they
open the versions recorded in ``curated.json`` (``pipeline.tables.open_curated``), which is
replaced in one rename once every table is final, so a kill leaves them the previous run's
tables, whole and matching each other.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import lance
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curation.decisions import balancing_weights, keep_and_reasons, split_of
from curation.near_duplicates import near_duplicates
from pipeline.compaction import compact
from pipeline.config.schema import Config, CurationConfig
from pipeline.tables import (
    CLIPS, CLIPS_SCHEMA, CURATED_VERSIONS, DECISION_FIELDS, IMAGES, IMAGES_SCHEMA, NEAR_DUPLICATE_FIELD, REJECTS,
    REJECTS_SCHEMA,
)

log = logging.getLogger("curation")

# table -> (row id column, the column that says two rows hold the same content)
MEDIA_TABLES = {CLIPS: ("clip_id", "source_sha256"), IMAGES: ("image_id", "image_id")}
FULL_SCHEMAS = {CLIPS: CLIPS_SCHEMA, IMAGES: IMAGES_SCHEMA}


# A test names one of the steps here to be killed right after it (the kill must land at an
# exact point, which no real fault can be timed to hit); nothing else reads it.
KILL_AFTER_ENV = "I2VGEN_TEST_KILL_AFTER"


def _step_done(name: str) -> None:
    if os.environ.get(KILL_AFTER_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def committed(uri: Path) -> bool:
    """A Lance table with at least one committed version. A run killed during its very first
    write leaves a folder without ``_versions``: it holds nothing and is written afresh."""
    return (uri / "_versions").is_dir() and any((uri / "_versions").iterdir())


def finalize(out: Path, config: Config) -> dict[str, Any]:
    """Bring the tables to their final state for this config and tag it; returns the summary."""
    summary: dict[str, Any] = {"out": str(out)}
    duplicates: list[dict[str, Any]] = []
    media_sources: list[pa.Array] = []
    for name, (key, content) in MEDIA_TABLES.items():
        if committed(out / name):
            duplicates += _drop_duplicates(out / name, key, content)
            media_sources.append(lance.dataset(str(out / name)).to_table(columns=["source"]).column("source").combine_chunks())
    _step_done("duplicates")
    _settle_rejects(out / REJECTS, duplicates, media_sources)
    _step_done("rejects")
    for name in MEDIA_TABLES:
        if committed(out / name):
            copies = near_duplicates(out / name, config.curation.near_duplicates) if name == CLIPS else None
            summary["clips" if name == CLIPS else "images"] = _decide(out / name, name, config.curation, copies)
    if committed(out / REJECTS):
        rejects = lance.dataset(str(out / REJECTS)).to_table(columns=["stage", "retryable"])
        stages = pc.value_counts(rejects.column("stage").combine_chunks()).to_pylist()
        summary["rejects"] = {
            "rows": rejects.num_rows,
            "by_stage": {s["values"]: s["counts"] for s in stages},
            "retryable": pc.sum(rejects.column("retryable").fill_null(False).cast(pa.int64())).as_py() or 0,
        }
    _step_done("decisions")
    _record_versions(out)
    return summary


def _drop_duplicates(uri: Path, key: str, content: str) -> list[dict[str, Any]]:
    """Delete the rows of a source whose content another source (the first by name) already
    gave, and the second copy of a source planned twice; returns the dedupe rejects."""
    ds = lance.dataset(str(uri))
    rows = ds.to_table(columns=list(dict.fromkeys([key, content, "source"])), with_row_id=True).to_pandas()
    if rows.empty:
        return []
    first_source = rows.groupby(content)["source"].transform("min")
    copies = rows.duplicated(subset=[key, "source"], keep="first")
    doomed = rows[(rows["source"] != first_source) | copies]
    if doomed.empty:
        return []
    ds.delete(f"_rowid IN ({', '.join(str(int(r)) for r in doomed['_rowid'])})")
    kind = "video" if key == "clip_id" else "image"
    others = doomed[doomed["source"] != first_source[doomed.index]]
    firsts = first_source[others.index]
    return [
        {"source": source, "kind": kind, "stage": "dedupe", "reason": f"same content as {first}",
         "retryable": False, "attempts": 1}
        for source, first in dict(zip(others["source"], firsts)).items()
    ]


def _settle_rejects(uri: Path, duplicates: list[dict[str, Any]], media_sources: list[pa.Array]) -> None:
    """One reject per source that has no rows: the latest (most attempts); a source that now
    has rows keeps none (a retryable failure that has since succeeded). Checked on the
    source column alone; only when something is to settle (a retried source, a duplicate)
    is the table read and rewritten."""
    if not committed(uri):
        return
    ds = lance.dataset(str(uri))
    sources = ds.to_table(columns=["source"]).column("source").combine_chunks()
    with_rows_mask = pc.is_in(sources, value_set=pa.concat_arrays(media_sources)) if media_sources else None
    settled_already = pc.count_distinct(sources).as_py() == len(sources) and not duplicates and (
        with_rows_mask is None or not pc.any(with_rows_mask).as_py())
    if settled_already:  # the usual case, read as one Arrow column: no per-row objects
        return
    table = ds.to_table()
    merged = pd.concat([table.to_pandas(), pd.DataFrame(duplicates, columns=REJECTS_SCHEMA.names)], ignore_index=True)
    with_rows = set(pa.concat_arrays(media_sources).to_pylist()) if media_sources else set()
    settled = merged[~merged["source"].isin(with_rows)].sort_values(["source", "attempts"], kind="stable")
    settled = settled.drop_duplicates(subset=["source"], keep="last")
    if len(settled) == table.num_rows and not duplicates:
        return
    fresh = pa.Table.from_pandas(settled, schema=REJECTS_SCHEMA, preserve_index=False)
    lance.write_dataset(fresh, str(uri), schema=REJECTS_SCHEMA, mode="overwrite")


def _decide(uri: Path, name: str, curation: CurationConfig, copies: Optional[dict[str, str]]) -> dict[str, Any]:
    """Recompute keep / drop_reason / weight / split for every row (and, for clips, which
    copy each near-duplicate defers to: ``copies``), then compact."""
    key = MEDIA_TABLES[name][0]
    ds = lance.dataset(str(uri))
    if ds.count_rows() == 0:  # nothing to join the decisions to: the empty table, full schema
        lance.write_dataset(FULL_SCHEMAS[name].empty_table(), str(uri), schema=FULL_SCHEMAS[name], mode="overwrite")
        return {"rows": 0, "kept": 0, "kept_val": 0, "dropped_by": {}}
    score_cols = ["aesthetic", "subject"] + (["motion", "camera_motion", "text_area"] if name == CLIPS else [])
    scores = ds.to_table(columns=[key, *score_cols]).to_pandas()
    columns: dict[str, Any] = {key: scores[key].to_numpy()}
    if copies is not None:
        kept = [copies.get(row_id) for row_id in scores[key]]
        scores["near_duplicate_of"] = kept
        columns["near_duplicate_of"] = pa.array(kept, pa.string())
    keep, reasons = keep_and_reasons(scores, curation.filters)
    weights = balancing_weights(scores, keep, curation.balance_bins, curation.balance_on)
    splits = [split_of(row_id, curation.val_fraction) for row_id in scores[key]]
    decisions = pa.table(
        {
            **columns,
            "keep": pa.array(keep, pa.bool_()),
            "drop_reason": pa.array(reasons, pa.string()),
            "weight": pa.array(weights, pa.float32()),
            "split": pa.array(splits, pa.string()),
        }
    )
    stale = [f.name for f in [*DECISION_FIELDS, NEAR_DUPLICATE_FIELD] if f.name in ds.schema.names]
    if stale:
        ds.drop_columns(stale)
        _step_done(f"drop {name}")
        ds = lance.dataset(str(uri))
    ds.merge(decisions, left_on=key)
    compact(uri)  # on the cluster's workers when large (pipeline.compaction)
    dropped = Counter(r.split(" ")[0] for r in reasons if r)
    figures: dict[str, Any] = {
        "rows": len(scores),
        "kept": int(keep.sum()),
        "kept_val": sum(1 for k, s in zip(keep, splits) if k and s == "val"),
        "dropped_by": dict(dropped),
    }
    if "camera_motion" in scores:  # the camera mix before and after the filters
        cameras = scores["camera_motion"].fillna("unknown")
        figures["camera_motion"] = {"all": cameras.value_counts().to_dict(), "kept": cameras[keep].value_counts().to_dict()}
    if copies is not None:
        figures["near_duplicates"] = {"copies": len(copies), "kept_copies": len(set(copies.values()))}
    return figures


def _record_versions(out: Path) -> None:
    """Point readers at the tables as they are now, all at once (write, then rename)."""
    versions = {name: lance.dataset(str(out / name)).version for name in (CLIPS, IMAGES, REJECTS)
                if committed(out / name)}
    partial = out / f"{CURATED_VERSIONS}.partial"
    partial.write_text(json.dumps(versions, indent=2) + "\n")
    os.replace(partial, out / CURATED_VERSIONS)
