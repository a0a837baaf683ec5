"""``i2vgen curate search DIR --image Q.jpg | --clip-id ID``: the curated clips nearest to a
picture or to a clip, as a table and a contact sheet, so a person can see what a filter keeps
or drops and what the near-duplicate finder joins.

Nearness is the cosine similarity of one of two descriptors, and every hit says which (``by``):

- ``clip_embedding``, the CLIP ViT-L/14 image embedding stored for clips curated with CLIP
  weights (``curation.scoring.aesthetic_clip``): what the frames show. A clip asks with its
  own when it has one; a picture asks with its embedding when the search is given the same
  weights (``clip_embedder``) and the table has embeddings. Clips curated without CLIP
  weights have none and are not among these hits.
- ``fingerprint``, otherwise: the weight-free fingerprint (``curation.scorers.fingerprint``:
  the layout of light and dark in each keyframe). A picture asks with its fingerprint at all
  three keyframe places.

Either is found through a vector index on its column where the table has one (the
fingerprints get one from ``curation.near_duplicates`` on large tables), by a flat scan
otherwise.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import lance
import numpy as np
from PIL import Image

from curation.near_duplicates import COLUMN, EMBEDDING, has_index
from curation.scorers.fingerprint import image_fingerprint
from pipeline.config.schema import ScoringConfig
from pipeline.tables import CLIPS, open_curated

if TYPE_CHECKING:
    from curation.scorers.laion import ClipAestheticScorer

SHOWN = ["clip_id", "source", "start_frame", "end_frame", "keep", "drop_reason", "camera_motion", "camera_confidence",
         "aesthetic", "near_duplicate_of", "thumbnail"]


class SearchError(ValueError):
    """A query that cannot be answered: no table, an unknown clip, an unreadable picture,
    CLIP weights that do not load."""


@dataclass
class Hit:
    similarity: float
    row: dict
    by: str  # the descriptor that ranked it: "clip_embedding" or "fingerprint"


@dataclass(frozen=True)
class Query:
    column: str  # the descriptor asked with, a column of the clips table
    vector: np.ndarray


def clip_embedder(scoring: ScoringConfig) -> Optional[ClipAestheticScorer]:
    """The LAION scorer of ``scoring``'s weights, whose CLIP embeds a picture as curation
    embedded the keyframes; None without weights (pictures are then searched by fingerprint)."""
    if not (scoring.aesthetic_head or scoring.aesthetic_clip):
        return None
    from curation.scorers.aesthetic import build_aesthetic_scorer

    try:
        return build_aesthetic_scorer(scoring.aesthetic_head, scoring.aesthetic_clip)
    except ValueError as err:  # one weight file without the other, or a file that does not fit
        raise SearchError(str(err)) from err


def search(folder: str | Path, *, image: Optional[str] = None, clip_id: Optional[str] = None, top: int = 12,
           embedder: Optional[ClipAestheticScorer] = None) -> list[Hit]:
    """The ``top`` clips nearest the picture at ``image`` or the clip ``clip_id``, nearest
    first. ``embedder`` (``clip_embedder``'s) lets a picture ask by CLIP embedding."""
    if (image is None) == (clip_id is None):
        raise SearchError("give either --image or --clip-id")
    table = Path(folder) / CLIPS
    if not table.exists():
        raise SearchError(f"{table}: no clips table (curate into {folder} first)")
    ds = open_curated(table)
    if COLUMN not in ds.schema.names:
        raise SearchError(f"{table} was curated before fingerprints were recorded: curate it again")
    query = _clip_query(ds, clip_id) if clip_id is not None else _image_query(ds, image, embedder)
    found = ds.to_table(columns=[c for c in SHOWN if c in ds.schema.names] + [query.column],
                        filter=f"{query.column} IS NOT NULL", prefilter=True, disable_scoring_autoprojection=True,
                        nearest={"column": query.column, "q": query.vector, "k": top + (clip_id is not None),
                                 "use_index": has_index(ds, query.column)})
    hits = []
    for row in found.to_pylist():
        if row["clip_id"] == clip_id:
            continue
        vector = np.asarray(row.pop(query.column), np.float32)
        hits.append(Hit(float(vector @ query.vector), row, query.column))
    return sorted(hits, key=lambda h: -h.similarity)[:top]


def _clip_query(ds: lance.LanceDataset, clip_id: str) -> Query:
    """The clip's CLIP embedding when it has one, else its fingerprint."""
    columns = [c for c in (EMBEDDING, COLUMN) if c in ds.schema.names]
    quoted = clip_id.replace("'", "''")
    row = next(iter(ds.to_table(columns=columns, filter=f"clip_id = '{quoted}'").to_pylist()), {})
    column = next((c for c in columns if row.get(c) is not None), None)
    if column is None:
        raise SearchError(f"{ds.uri}: no clip {clip_id!r} with a fingerprint")
    return Query(column, np.asarray(row[column], np.float32))


def _image_query(ds: lance.LanceDataset, path: str | Path, embedder: Optional[ClipAestheticScorer]) -> Query:
    """The picture's CLIP embedding when there is an embedder and the table has embeddings
    to compare it with, else its fingerprint at every keyframe place."""
    try:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"))  # writable: torch warns on a read-only array
    except (OSError, ValueError) as err:
        raise SearchError(f"{path}: not a readable picture ({err})") from err
    if embedder is not None and EMBEDDING in ds.schema.names and ds.count_rows(f"{EMBEDDING} IS NOT NULL"):
        return Query(EMBEDDING, embedder.scores_and_embeddings(rgb[None])[1][0])
    return Query(COLUMN, image_fingerprint(rgb))


def write_sheet(hits: list[Hit], title: str, page: Path) -> Path:
    """The hits as an HTML contact sheet: thumbnails with their similarity and decision."""
    import pandas as pd

    from curation.report import STYLE, contact_sheet

    rows = pd.DataFrame([{**hit.row, "similarity": hit.similarity} for hit in hits])
    body = contact_sheet(rows, title, "clip_id") if hits else f"<h3>{html.escape(title)}</h3><p>no clips</p>"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return page
