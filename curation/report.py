"""``i2vgen curate report DIR``: one self-contained HTML page for tuning thresholds by eye.

Histograms of each score with the thresholds drawn on them (kept and dropped rows stacked),
the two motion methods against each other, the camera-motion mix before and after the
filters, drop counts by reason with an example of each, bucket counts, near-duplicate groups
side by side, contact sheets of the best and worst clips and images, the rows without a
caption, and every reject with its reason. Reads only the small columns (never the media
blobs), so it is quick on large tables.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config.schema import CAMERA_CLASSES, Config, FiltersConfig  # noqa: E402
from pipeline.tables import CLIPS, IMAGES, REJECTS, open_curated  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1, h2 { font-weight: 600; } table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; text-align: left; vertical-align: top; }
.sheet { display: flex; flex-wrap: wrap; gap: 10px; } .card { width: 230px; font-size: 12px; }
.card img { width: 230px; border-radius: 4px; } .figs img { max-width: 440px; margin-right: 8px; }
.dropped { color: #a33; } .muted { color: #777; }
"""


def _read(out: Path, name: str, columns: list[str]) -> Optional[pd.DataFrame]:
    path = out / name
    if not path.exists():
        return None
    ds = open_curated(path)
    return ds.to_table(columns=[c for c in columns if c in ds.schema.names]).to_pandas()


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _thresholds(score: str, filters: FiltersConfig) -> list[tuple[str, float]]:
    return {
        "aesthetic": [("min", filters.min_aesthetic)],
        "motion": [("min", filters.min_motion), ("max", filters.max_motion)],
        "subject": [("min", filters.min_subject), ("max", filters.max_subject)],
        "text_area": [("max", filters.max_text_area)],
    }.get(score, [])


def histogram(df: pd.DataFrame, score: str, filters: FiltersConfig, title: str) -> str:
    """Kept and dropped rows stacked, thresholds as labelled dashed lines."""
    values = df[score].to_numpy(dtype=np.float64)
    keep = df["keep"].to_numpy(dtype=bool)
    finite = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(5, 3))
    if finite.any():
        bins = np.histogram_bin_edges(values[finite], bins=20)
        ax.hist([values[finite & keep], values[finite & ~keep]], bins=bins, stacked=True,
                color=["#4c9f70", "#c94c4c"], label=["kept", "dropped"])
    for side, value in _thresholds(score, filters):
        ax.axvline(value, color="#333", linestyle="--", linewidth=1)
        ax.annotate(f"{side} {value:g}", (value, ax.get_ylim()[1] * 0.9), fontsize=8, rotation=90, ha="right")
    ax.set_title(title)
    ax.set_xlabel(score)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig, title)


def motion_scatter(clips: pd.DataFrame) -> str:
    both = clips[["motion_flow", "motion_vectors"]].dropna()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter(both["motion_flow"], both["motion_vectors"], s=12, alpha=0.7)
    ax.set_xlabel("Farneback flow (diagonals / s)")
    ax.set_ylabel("codec motion vectors (diagonals / s)")
    ax.set_title("motion: two methods")
    return _png(fig, "motion: two methods")


def camera_mix(clips: pd.DataFrame) -> str:
    """Clips per camera class, all of them and those the filters keep, side by side."""
    cameras = clips["camera_motion"].fillna("unknown")
    classes = [c for c in (*CAMERA_CLASSES, "unknown") if c in set(cameras)]
    every = [int((cameras == c).sum()) for c in classes]
    kept = [int(((cameras == c) & clips["keep"].astype(bool)).sum()) for c in classes]
    fig, ax = plt.subplots(figsize=(5, 3))
    at = np.arange(len(classes))
    ax.bar(at - 0.2, every, width=0.4, color="#8aa9c9", label="all clips")
    ax.bar(at + 0.2, kept, width=0.4, color="#4c9f70", label="kept")
    ax.set_xticks(at, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("clips")
    title = "clips: camera motion before and after the filters"
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig, title)


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _reason_kind(df: pd.DataFrame) -> pd.Series:
    """Each dropped row's reason, by its first word: the column it failed on."""
    return df["drop_reason"].fillna("?").str.split(" ").str[0]


def reasons_table(df: pd.DataFrame) -> str:
    dropped = df[~df["keep"].astype(bool)]
    if dropped.empty:
        return '<p class="muted">nothing dropped</p>'
    groups: dict[str, list[str]] = {}
    for reason in dropped["drop_reason"].fillna("?"):
        groups.setdefault(reason.split(" ")[0], []).append(reason)
    rows = [[name, len(r), "; ".join(list(dict.fromkeys(r))[:3])] for name, r in sorted(groups.items())]
    return _table(rows, ["reason", "rows", "examples"])


def reason_examples(df: pd.DataFrame, id_column: str, per_reason: int = 3) -> str:
    """A few dropped rows of each reason, so a person sees what a filter takes away."""
    dropped = df[~df["keep"].astype(bool)]
    if dropped.empty:
        return ""
    kinds = _reason_kind(dropped)
    return "".join(contact_sheet(dropped[kinds == kind].head(per_reason), f"dropped for {kind}", id_column)
                   for kind in sorted(set(kinds)))


def near_duplicate_groups(clips: pd.DataFrame, groups: int = 6) -> str:
    """The largest groups of copies: the clip kept, then the copies that defer to it."""
    if "near_duplicate_of" not in clips or clips["near_duplicate_of"].isna().all():
        return '<p class="muted">no near-duplicates</p>'
    copies = clips.dropna(subset=["near_duplicate_of"])
    largest = copies["near_duplicate_of"].value_counts().head(groups).index
    by_id = clips.set_index("clip_id")
    sheets = []
    for kept in largest:
        members = pd.concat([by_id.loc[[kept]], by_id[by_id["near_duplicate_of"] == kept]]).reset_index()
        sheets.append(contact_sheet(members, f"kept {kept} and its copies", "clip_id"))
    return f"<p>{len(copies)} copies of {copies['near_duplicate_of'].nunique()} clips.</p>" + "".join(sheets)


def captions_line(df: pd.DataFrame, name: str) -> str:
    """How many rows have no caption, and where the captions came from."""
    missing = int((df["caption"].fillna("") == "").sum())
    sources = df["caption_source"].fillna("not recorded").value_counts().to_dict() if "caption_source" in df else {}
    detail = ", ".join(f"{k}: {v}" for k, v in sources.items())
    return f"<p>{name} without a caption: <b>{missing}</b> of {len(df)}{f' (caption source: {detail})' if detail else ''}.</p>"


def bucket_tables(clips: pd.DataFrame, frame_counts: list[int], fps_values: list[int]) -> str:
    kept = clips[clips["keep"].astype(bool)]
    aspect = Counter(kept["bucket"])
    pairs: Counter[tuple[int, int]] = Counter()
    for options in kept["frame_fps"]:
        pairs.update((int(o["frames"]), int(o["fps"])) for o in options)
    grid = [[f] + [pairs.get((f, fps), 0) for fps in fps_values] for f in frame_counts]
    return (_table(sorted(aspect.items()), ["aspect bucket", "kept clips"])
            + "<p>Kept clips able to supply each (frames, fps) pair:</p>"
            + _table(grid, ["frames \\ fps", *fps_values]))


def contact_sheet(df: pd.DataFrame, title: str, id_column: str) -> str:
    if df.empty:
        return f'<h3>{html.escape(title)}</h3><p class="muted">none</p>'
    cards = []
    for _, row in df.iterrows():
        img = base64.b64encode(row["thumbnail"]).decode() if row.get("thumbnail") else ""
        scores = ", ".join(f"{k} {row[k]:.3g}" for k in ("similarity", "aesthetic", "motion", "subject", "text_area",
                                                           "weight")
                           if k in row and row[k] is not None and not pd.isna(row[k]))
        if isinstance(row.get("camera_motion"), str):
            scores += f", camera {row['camera_motion']} ({row.get('camera_confidence', float('nan')):.2f})"
        reason = (f'<div class="dropped">{html.escape(row["drop_reason"])}</div>'
                  if isinstance(row.get("drop_reason"), str) else "")
        cards.append(
            f'<div class="card"><img src="data:image/jpeg;base64,{img}"><div><b>{html.escape(str(row[id_column]))}</b></div>'
            f'<div>{html.escape(str(row.get("caption") or ""))}</div><div class="muted">{scores}</div>{reason}</div>'
        )
    return f'<h3>{html.escape(title)}</h3><div class="sheet">{"".join(cards)}</div>'


def _sheets(df: pd.DataFrame, top: int, id_column: str, what: str) -> str:
    kept = df[df["keep"].astype(bool)].sort_values("aesthetic", ascending=False)
    dropped = df[~df["keep"].astype(bool)].sort_values("aesthetic")
    return (contact_sheet(kept.head(top), f"best kept {what} (by aesthetic)", id_column)
            + contact_sheet(kept.tail(top).iloc[::-1], f"worst kept {what}", id_column)
            + contact_sheet(dropped.head(top), f"worst dropped {what}", id_column))


def throughput_table(summary: dict) -> str:
    """The last run's throughput per stage, as ``summary.json`` holds it."""
    labels = {
        "wall_s": "pipeline wall time, from planning to its last unit (s)",
        "finalize_s": "finalize: duplicates, decisions, compaction (s)",
        "video_seconds_per_s": "video-seconds per second (whole pipeline)",
        "clips_per_s": "clips per second",
        "images_per_s": "images per second",
        "files_per_s": "inputs per second",
        "first_result_s": "start-up: seconds to the first unit's result",
        "steady_video_seconds_per_s": "after start-up: video-seconds per second",
        "steady_images_per_s": "after start-up: images per second",
        "steady_share_outside_work": "from the first unit's start: share of core time outside per-file work and scoring (CPU)",
        "file_stage_video_seconds_per_worker_s": "per-file stage: video-seconds per worker-second",
        "aesthetic_rows_per_worker_s": "aesthetic stage: rows per worker-second",
    }
    figures = summary.get("throughput", {})
    return _table([[label, figures[key]] for key, label in labels.items() if figures.get(key) is not None],
                  ["last run", "figure"])


def write_report(out_dir: str | Path, config: Config, top: int = 8) -> Path:
    out = Path(out_dir)
    filters = config.curation.filters
    common = ["source", "caption", "caption_source", "aesthetic", "subject", "keep", "drop_reason", "weight", "thumbnail",
              "bucket"]
    clips = _read(out, CLIPS, ["clip_id", "motion", "motion_flow", "motion_vectors", "frame_fps", "camera_motion",
                               "camera_confidence", "text_area", "near_duplicate_of", *common])
    images = _read(out, IMAGES, ["image_id", *common])
    rejects = _read(out, REJECTS, ["source", "kind", "stage", "reason", "retryable", "attempts"])
    parts = [f"<h1>Curation report: {html.escape(str(out))}</h1>"]
    totals = [
        ["clip rows", 0 if clips is None else len(clips), 0 if clips is None else int(clips["keep"].sum())],
        ["image rows", 0 if images is None else len(images), 0 if images is None else int(images["keep"].sum())],
        ["rejects", 0 if rejects is None else len(rejects), "-"],
    ]
    parts.append(_table(totals, ["table", "rows", "kept"]))
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        parts.append(throughput_table(summary))
        parts.append(f"<details><summary>summary.json</summary><pre>{html.escape(json.dumps(summary, indent=2))}</pre></details>")
    for name, df, scores, id_column in (("clips", clips, ["aesthetic", "motion", "subject", "text_area"], "clip_id"),
                                        ("images", images, ["aesthetic", "subject"], "image_id")):
        parts.append(f"<h2>{name}</h2>")
        if df is None or df.empty:
            parts.append(f'<p class="muted">no {name}</p>')
            continue
        figures = [histogram(df, s, filters, f"{name}: {s}") for s in scores if s in df and df[s].notna().any()]
        if name == "clips":
            figures.append(motion_scatter(df))
            if "camera_motion" in df:
                figures.append(camera_mix(df))
        parts.append(f'<div class="figs">{"".join(figures)}</div>')
        parts.append(captions_line(df, name))
        parts.append(reasons_table(df))
        if name == "clips":
            parts.append(bucket_tables(df, config.train.frame_counts, config.train.fps_values))
            parts.append("<h3>near-duplicates</h3>" + near_duplicate_groups(df))
        parts.append(_sheets(df, top, id_column, name))
        parts.append(reason_examples(df, id_column))
    parts.append("<h2>rejects</h2>")
    if rejects is None or rejects.empty:
        parts.append('<p class="muted">no rejects</p>')
    else:
        parts.append(_table(sorted(Counter(rejects["stage"]).items()), ["stage", "rejects"]))
        columns = [c for c in ("source", "kind", "stage", "reason", "retryable", "attempts") if c in rejects]
        parts.append(_table(rejects[columns].values.tolist(), columns))
    page = out / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>curation report</title>"
                    f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return page
