"""``i2vgen curate search DIR --image Q.jpg | --clip-id ID``: the curated clips nearest to a
picture or to a clip, as a table and a contact sheet, so a person can see what a filter keeps
or drops and what the near-duplicate finder joins.

Nearness is the cosine similarity of the weight-free fingerprints (``curation.scorers.
fingerprint``: the layout of light and dark in each keyframe), found through the clips
table's vector index where it has one (``curation.near_duplicates``), by a flat scan
otherwise. A picture asks with its fingerprint at all three keyframe places.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from curation.near_duplicates import COLUMN, has_index
from curation.scorers.fingerprint import clip_fingerprint, frame_fingerprint
from pipeline.tables import CLIPS, open_curated

KEYFRAMES = 3
SHOWN = ["clip_id", "source", "start_frame", "end_frame", "keep", "drop_reason", "camera_motion", "camera_confidence",
         "aesthetic", "near_duplicate_of", "thumbnail"]


class SearchError(ValueError):
    """A query that cannot be answered: no table, an unknown clip, an unreadable picture."""


@dataclass
class Hit:
    similarity: float
    row: dict


def query_from_image(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise SearchError(f"{path}: not a readable picture ({err})") from err
    return clip_fingerprint([frame_fingerprint(rgb)] * KEYFRAMES)


def search(folder: str | Path, *, image: Optional[str] = None, clip_id: Optional[str] = None, top: int = 12) -> list[Hit]:
    """The ``top`` clips nearest the picture at ``image`` or the clip ``clip_id``, nearest first."""
    if (image is None) == (clip_id is None):
        raise SearchError("give either --image or --clip-id")
    table = Path(folder) / CLIPS
    if not table.exists():
        raise SearchError(f"{table}: no clips table (curate into {folder} first)")
    ds = open_curated(table)
    if COLUMN not in ds.schema.names:
        raise SearchError(f"{table} was curated before fingerprints were recorded: curate it again")
    if clip_id is not None:
        quoted = clip_id.replace("'", "''")
        found = ds.to_table(columns=[COLUMN], filter=f"clip_id = '{quoted}'")
        if found.num_rows == 0 or not found.column(COLUMN).is_valid().to_pylist()[0]:
            raise SearchError(f"{table}: no clip {clip_id!r} with a fingerprint")
        query = np.asarray(found.column(COLUMN).to_pylist()[0], np.float32)
    else:
        query = query_from_image(image)
    indexed = has_index(ds)
    found = ds.to_table(columns=[c for c in SHOWN if c in ds.schema.names] + [COLUMN], filter=f"{COLUMN} IS NOT NULL",
                        prefilter=True, disable_scoring_autoprojection=True,
                        nearest={"column": COLUMN, "q": query, "k": top + (clip_id is not None), "use_index": indexed})
    hits = []
    for row in found.to_pylist():
        if row["clip_id"] == clip_id:
            continue
        vector = np.asarray(row.pop(COLUMN), np.float32)
        hits.append(Hit(float(vector @ query), row))
    return sorted(hits, key=lambda h: -h.similarity)[:top]


def write_sheet(hits: list[Hit], title: str, page: Path) -> Path:
    """The hits as an HTML contact sheet: thumbnails with their similarity and decision."""
    import pandas as pd

    from curation.report import STYLE, contact_sheet

    rows = pd.DataFrame([{**hit.row, "similarity": hit.similarity} for hit in hits])
    body = contact_sheet(rows, title, "clip_id") if hits else f"<h3>{html.escape(title)}</h3><p>no clips</p>"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return page
