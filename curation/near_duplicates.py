"""Clips that show the same footage, found across the whole table through a Lance vector
index of their fingerprints (``curation.scorers.fingerprint``), never by comparing all pairs.

Each clip asks the table for its ``neighbours`` nearest fingerprints in batches (Lance's
batch nearest-neighbour query); a pair whose keyframes agree on average by at least
``min_similarity`` (cosine) is a copy, unless both clips have a CLIP embedding
(``clip_embedding``, curated with CLIP weights) and those agree by less than
``min_clip_similarity``: the fingerprint sees only the layout of light and dark, CLIP what
the frames show, so the pair must match on both. A clip without an embedding is judged on
its fingerprint alone. Copies are joined into groups (a chain of copies is
one group), and each group keeps its best clip: the highest aesthetic score, then the most
pixels, then the most frames, then the smallest id (so reruns agree). The others are marked
``near_duplicate_of`` the kept one, which finalize turns into their drop reason.

With Ray running, the batches of each fragment are searched in a Ray task of their own, so
the driver receives only the pairs found, never the vectors. A table of at least
``index_min_rows`` clips is searched through an IVF index (built once, then extended with
each run's new fragments); smaller ones by an exact flat scan. The embeddings only confirm
pairs the fingerprints found: they ride along with the query and neighbour rows and are
never indexed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config.schema import NearDuplicatesConfig

log = logging.getLogger("curation")

QUERY_BATCH = 1024  # fingerprints asked for in one Lance call
COLUMN = "fingerprint"
EMBEDDING = "clip_embedding"  # pipeline.tables.CLIP_EMBEDDING
Pair = tuple[str, str]


def near_duplicates(uri: Path, cfg: NearDuplicatesConfig) -> dict[str, str]:
    """``{clip_id: clip_id kept}`` for every clip that copies a better one."""
    ds = lance.dataset(str(uri))
    if not cfg.enabled or COLUMN not in ds.schema.names or ds.count_rows() < 2:
        return {}
    indexed = _index(ds, cfg)
    ds = lance.dataset(str(uri))
    fragments = [f.fragment_id for f in ds.get_fragments()]
    pairs = _search(str(uri), ds.version, fragments, cfg, indexed)
    if not pairs:
        return {}
    return _keepers(ds, _groups(pairs))


def has_index(ds: lance.LanceDataset, column: str = COLUMN) -> bool:
    """Whether the table has a vector index on ``column`` (its fingerprints unless named)."""
    return any(index["fields"] == [column] for index in ds.list_indices())


def _index(ds: lance.LanceDataset, cfg: NearDuplicatesConfig) -> bool:
    """Build the IVF index on a table large enough for one, or add the new fragments to
    the index it has; True when searches should go through it."""
    rows = ds.count_rows()
    if rows < cfg.index_min_rows:
        return False
    if has_index(ds):
        ds.optimize.optimize_indices()
    else:
        # IVF_FLAT: exact distances within the probed partitions (PQ's approximation would
        # blur the very similarities the threshold reads); sqrt(n) partitions is the usual size.
        ds.create_index(COLUMN, index_type="IVF_FLAT", metric="l2", num_partitions=max(1, int(math.sqrt(rows))))
    return True


def _search(uri: str, version: int, fragments: list[int], cfg: NearDuplicatesConfig, indexed: bool) -> set[Pair]:
    """The copy pairs of all ``fragments``' clips: in Ray tasks when Ray runs, else here."""
    import ray

    if not ray.is_initialized():
        return _pairs_of_fragments(uri, version, fragments, cfg, indexed)
    search = ray.remote(num_cpus=1)(_pairs_of_fragments)
    found = ray.get([search.remote(uri, version, [f], cfg, indexed) for f in fragments])
    return set().union(*found)


def _pairs_of_fragments(uri: str, version: int, fragments: list[int], cfg: NearDuplicatesConfig,
                        indexed: bool) -> set[Pair]:
    """Copy pairs (smaller id first) between the clips of ``fragments`` and the whole table."""
    ds = lance.dataset(uri, version=version)
    columns = ["clip_id", COLUMN] + ([EMBEDDING] if EMBEDDING in ds.schema.names else [])
    pairs: set[Pair] = set()
    scan = ds.scanner(columns=columns, fragments=[ds.get_fragment(f) for f in fragments], batch_size=QUERY_BATCH)
    for batch in scan.to_batches():
        batch = _with_layout(batch)
        if batch.num_rows:
            pairs |= _copies_of(ds, batch, columns, cfg, indexed)
    return pairs


def _with_layout(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's clips whose fingerprint has a layout (at least one keyframe not flat): an
    all-flat clip's fingerprint is the zero vector, which agrees with nothing, so no query
    is spent on it."""
    batch = batch.filter(pc.is_valid(batch.column(COLUMN)))
    if batch.num_rows == 0:
        return batch
    return batch.filter(pa.array(np.linalg.norm(_matrix(batch.column(COLUMN)), axis=1) > 0.5))


def _copies_of(ds: lance.LanceDataset, batch: pa.RecordBatch, columns: list[str], cfg: NearDuplicatesConfig,
               indexed: bool) -> set[Pair]:
    """The copy pairs of the batch's clips: their nearest fingerprints in the table that agree
    by ``min_similarity``, and by ``min_clip_similarity`` on CLIP where both clips have one."""
    queries = _matrix(batch.column(COLUMN))
    ids = batch.column("clip_id").to_pylist()
    found = ds.to_table(columns=columns, filter=f"{COLUMN} IS NOT NULL", prefilter=True,
                        disable_scoring_autoprojection=True, nearest={
                            "column": COLUMN, "q": queries, "k": cfg.neighbours + 1, "use_index": indexed,
                            "minimum_nprobes": 20})
    query_of = found.column("query_index").to_numpy()
    similarity = np.einsum("ij,ij->i", _matrix(found.column(COLUMN)), queries[query_of])
    copies = (similarity >= cfg.min_similarity) & _clip_agrees(batch, found, query_of, cfg.min_clip_similarity)
    others = found.column("clip_id").to_pylist()
    return {(min(ids[q], other), max(ids[q], other))
            for q, other, copy in zip(query_of, others, copies) if copy and other != ids[q]}


def _clip_agrees(batch: pa.RecordBatch, found: pa.Table, query_of: np.ndarray, minimum: float) -> np.ndarray:
    """Per neighbour found: False only where both it and its query clip have a CLIP
    embedding and the two agree by less than ``minimum`` (cosine)."""
    if EMBEDDING not in batch.schema.names:
        return np.ones(len(query_of), bool)
    queries, query_has = _embeddings(batch.column(EMBEDDING))
    neighbours, neighbour_has = _embeddings(found.column(EMBEDDING))
    cosine = np.einsum("ij,ij->i", neighbours, queries[query_of])
    return ~(query_has[query_of] & neighbour_has) | (cosine >= minimum)


def _embeddings(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A column of CLIP embeddings as a float32 matrix (zero rows for the nulls) and which
    rows have one."""
    has = pc.is_valid(column).to_numpy(zero_copy_only=False)
    matrix = np.zeros((len(column), column.type.list_size), np.float32)
    if has.any():
        matrix[has] = _matrix(column.filter(pa.array(has)))
    return matrix, has


def _matrix(vectors: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column of fixed-size vectors (no nulls) as a float32 matrix, one row each."""
    return pc.list_flatten(vectors).to_numpy().astype(np.float32).reshape(len(vectors), -1)


def _groups(pairs: set[Pair]) -> list[list[str]]:
    """Connected groups of the copy pairs (union-find)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in sorted(pairs):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = {}
    for x in parent:
        members.setdefault(root(x), []).append(x)
    return list(members.values())


def _keepers(ds: lance.LanceDataset, groups: list[list[str]]) -> dict[str, str]:
    """Each group's best clip, and the others pointing at it."""
    wanted = ", ".join("'" + x.replace("'", "''") + "'" for x in sorted({x for group in groups for x in group}))
    quality = ds.to_table(columns=["clip_id", "aesthetic", "video_width", "video_height", "num_frames"],
                          filter=f"clip_id IN ({wanted})").to_pylist()
    by_id = {row["clip_id"]: row for row in quality}

    def rank(clip_id: str) -> tuple:
        row = by_id[clip_id]
        aesthetic = row["aesthetic"] if row["aesthetic"] is not None and not math.isnan(row["aesthetic"]) else -math.inf
        return (-aesthetic, -(row["video_width"] * row["video_height"]), -row["num_frames"], clip_id)

    copies: dict[str, str] = {}
    for group in groups:
        ranked = sorted((x for x in group if x in by_id), key=rank)
        for other in ranked[1:]:
            copies[other] = ranked[0]
    log.info("near-duplicates: %d copies in %d groups", len(copies), len(groups))
    return copies
