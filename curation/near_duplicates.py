"""Clips that show the same footage, found across the whole table partition by partition
of an IVF model of their fingerprints (``curation.scorers.fingerprint``), never by comparing
all pairs of a large table.

A pair of clips whose keyframes agree on average by at least ``min_similarity`` (cosine) is
a copy, unless both clips have a CLIP embedding (``clip_embedding``, curated with CLIP
weights) and those agree by less than ``min_clip_similarity``: the fingerprint sees only
the layout of light and dark, CLIP what the frames show, so the pair must match on both. A
clip without an embedding is judged on its fingerprint alone. The clips are then taken best
first (the highest aesthetic score, then the most pixels, then the most frames, then the
smallest id, so reruns agree): a clip that no kept clip copies is kept, and its own copies
are marked ``near_duplicate_of`` it, which finalize turns into their drop reason.

How pairs are found. A table of fewer than ``index_min_rows`` clips is one partition, and
every clip is compared with every other by a blocked matrix product: exact. A larger table
gets sqrt(n) partitions, trained by Lance's IVF k-means (``IndicesBuilder.train_ivf``) on a
sample. Each clip belongs to its nearest centroid's partition and also visits the next
``partitions_probed - 1`` nearest ones, so a pair is compared when either clip visits the
other's partition. Each partition's comparisons are one matrix product of its visitors
against its members: Lance's own batch query through an IVF index answered one query at a
time (9.5 ms each), which made it slower than a flat scan below about 140,000 clips.
With Ray running, a partitioned table's search is a shuffle through the object store: a
task per run of fragments assigns their clips and returns one block per group of partitions
(``num_returns``), and a task per group compares them (at most ``GROUPS_PER_CPU`` x the
cluster's CPUs of each, so the objects number at most the square of that); the driver
holds only references and receives only the pairs. A query clip travels once per partition it visits, with its
fingerprint and CLIP embedding, so the object store holds about ``partitions_probed``
copies of those two columns while the search runs. The table also gets a Lance IVF_FLAT
index on the fingerprints (built once, then extended with each run's new fragments), which
``curate search`` queries.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config.schema import NearDuplicatesConfig

log = logging.getLogger("curation")

COLUMN = "fingerprint"
EMBEDDING = "clip_embedding"  # pipeline.tables.CLIP_EMBEDDING
BLOCK_ROWS = 4096  # rows of each side of one tile of comparisons (4096 x 4096 floats: 64 MB)
GROUPS_PER_CPU = 4  # comparison tasks per cluster CPU, so a large partition does not leave cores idle
Pair = tuple[str, str]


def near_duplicates(uri: Path, cfg: NearDuplicatesConfig) -> dict[str, str]:
    """``{clip_id: clip_id kept}`` for every clip that copies a better one."""
    ds = lance.dataset(str(uri))
    if not cfg.enabled or COLUMN not in ds.schema.names:
        return {}
    measured = ds.count_rows(filter=f"{COLUMN} IS NOT NULL")
    if measured < 2:
        return {}
    centroids = _centroids(ds, measured, cfg)
    if centroids is not None:
        _index(ds, centroids)
        ds = lance.dataset(str(uri))
    fragments = [f.fragment_id for f in ds.get_fragments()]
    pairs = _search(str(uri), ds.version, fragments, centroids, cfg)
    if not pairs:
        return {}
    return _keepers(ds, pairs)


def has_index(ds: lance.LanceDataset, column: str = COLUMN) -> bool:
    """Whether the table has a vector index on ``column`` (its fingerprints unless named)."""
    return any(index["fields"] == [column] for index in ds.list_indices())


def _index(ds: lance.LanceDataset, centroids: np.ndarray) -> None:
    """Build ``curate search``'s IVF index on the search's own centroids (k-means runs
    once), or add the new fragments to the index the table has."""
    if has_index(ds):
        ds.optimize.optimize_indices()
    else:
        # IVF_FLAT: exact distances within the probed partitions (PQ's approximation would
        # blur the very similarities the threshold reads).
        ds.create_index(COLUMN, index_type="IVF_FLAT", metric="l2", num_partitions=len(centroids),
                        ivf_centroids=centroids)


def _centroids(ds: lance.LanceDataset, measured: int, cfg: NearDuplicatesConfig) -> Optional[np.ndarray]:
    """The partitions' centroids (Lance's IVF k-means on a sample), or None for one partition
    where the table is under ``index_min_rows``."""
    if measured < cfg.index_min_rows:
        return None
    from lance.indices import IndicesBuilder

    partitions = max(2, int(math.sqrt(measured)))  # sqrt(n) partitions, the usual IVF size
    # Lance samples partitions x sample_rate rows and wants at least that many (256 is its default).
    sample_rate = max(2, min(256, measured // partitions))
    model = IndicesBuilder(ds, COLUMN).train_ivf(partitions, distance_type="l2", sample_rate=sample_rate)
    return _matrix(model.centroids)


def _search(uri: str, version: int, fragments: list[int], centroids: Optional[np.ndarray],
            cfg: NearDuplicatesConfig) -> set[Pair]:
    """The copy pairs of the whole table: a partitioned table's in Ray tasks when Ray runs,
    else here. One partition (under ``index_min_rows`` clips, so the driver's load is
    bounded) is compared here even with Ray: it would be one task anyway, and a small job's
    finalize waited 2.0 s of its 2.2 s on starting Ray workers for it (24 clips, 2 cores)."""
    import ray

    if centroids is None or not ray.is_initialized():
        return _compare(cfg, *_assign(uri, version, fragments, centroids, cfg.partitions_probed, 1))
    from pipeline.ray_runtime import cluster_cpus

    tasks = GROUPS_PER_CPU * cluster_cpus()
    groups = min(len(centroids), tasks)  # at least 2 (so are both), so num_returns gives a list
    assign = ray.remote(num_cpus=1, num_returns=groups)(_assign)
    compare = ray.remote(num_cpus=1)(_compare)
    centroids_ref = ray.put(centroids)
    # At most ``tasks`` assigning tasks, each over a run of fragments: the shuffle makes one
    # object per assigning task and group.
    runs = [run.tolist() for run in np.array_split(np.asarray(fragments), min(len(fragments), tasks))]
    blocks = [assign.remote(uri, version, run, centroids_ref, cfg.partitions_probed, groups) for run in runs]
    found = ray.get([compare.remote(cfg, *[b[g] for b in blocks]) for g in range(groups)])
    return set().union(*found)


def _assign(uri: str, version: int, fragments: list[int], centroids: Optional[np.ndarray], probed: int,
            groups: int) -> list[pa.Table]:
    """The clips of ``fragments`` that have a layout, as one table per group of partitions
    (partition p is in group p mod ``groups``): each clip as a member of its nearest
    centroid's partition, and as a visitor of its other ``probed - 1`` nearest ones."""
    ds = lance.dataset(uri, version=version)
    columns = ["clip_id", COLUMN] + ([EMBEDDING] if EMBEDDING in ds.schema.names else [])
    table = _with_layout(ds.scanner(columns=columns, fragments=[ds.get_fragment(f) for f in fragments]).to_table())
    if centroids is None:
        visits = np.zeros((table.num_rows, 1), np.int64)
    else:
        # Squared L2 distance up to each row's own |v|^2, which does not change the order.
        distance = (centroids**2).sum(1)[None, :] - 2 * _matrix(table.column(COLUMN)) @ centroids.T
        probed = min(probed, len(centroids))
        nearest = np.argpartition(distance, probed - 1, axis=1)[:, :probed]
        visits = np.take_along_axis(nearest, np.argsort(np.take_along_axis(distance, nearest, 1), 1), 1)
    rows = np.repeat(np.arange(table.num_rows), visits.shape[1])
    visited = table.take(pa.array(rows)).append_column("partition", pa.array(visits.ravel())).append_column(
        "member", pa.array(np.tile(np.arange(visits.shape[1]) == 0, table.num_rows)))
    group_of = visits.ravel() % groups
    return [visited.filter(pa.array(group_of == g)) for g in range(groups)]


def _compare(cfg: NearDuplicatesConfig, *blocks: pa.Table) -> set[Pair]:
    """Copy pairs (smaller id first) within each partition of ``blocks``: members against
    members, visitors against members."""
    table = pa.concat_tables(blocks)
    if table.num_rows < 2:
        return set()
    vectors = _matrix(table.column(COLUMN))
    embeddings, has_embedding = (_embeddings(table.column(EMBEDDING)) if EMBEDDING in table.schema.names
                                 else (None, None))
    ids = table.column("clip_id").to_pylist()
    partition = table.column("partition").to_numpy()
    member = table.column("member").to_numpy(zero_copy_only=False)
    pairs: set[Pair] = set()
    order = np.argsort(partition, kind="stable")
    bounds = np.flatnonzero(np.diff(partition[order])) + 1
    for rows in np.split(order, bounds):
        members, visitors = rows[member[rows]], rows[~member[rows]]
        found = [_similar(vectors, members, members, cfg.min_similarity, upper=True),
                 _similar(vectors, visitors, members, cfg.min_similarity, upper=False)]
        a, b = (np.concatenate(side) for side in zip(*found))
        if embeddings is not None:
            agree = ~(has_embedding[a] & has_embedding[b]) | (
                np.einsum("ij,ij->i", embeddings[a], embeddings[b]) >= cfg.min_clip_similarity)
            a, b = a[agree], b[agree]
        pairs |= {(min(ids[i], ids[j]), max(ids[i], ids[j])) for i, j in zip(a, b) if ids[i] != ids[j]}
    return pairs


def _similar(vectors: np.ndarray, left: np.ndarray, right: np.ndarray, minimum: float,
             upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i from ``left``, j from ``right``) whose vectors agree by ``minimum``, in
    tiles of ``BLOCK_ROWS`` x ``BLOCK_ROWS`` (a partition of a million clips still costs
    only one tile of memory); with ``upper`` (left is right) each pair once."""
    found_a, found_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for top in range(0, len(left), BLOCK_ROWS):
        rows = left[top:top + BLOCK_ROWS]
        for first in range(top if upper else 0, len(right), BLOCK_ROWS):
            columns = right[first:first + BLOCK_ROWS]
            similarity = vectors[rows] @ vectors[columns].T
            if upper and first == top:  # the diagonal tile: only j after i
                similarity[np.tril_indices(len(rows), 0, len(columns))] = -np.inf
            i, j = np.nonzero(similarity >= minimum)
            found_a.append(rows[i])
            found_b.append(columns[j])
    return np.concatenate(found_a), np.concatenate(found_b)


def _with_layout(table: pa.Table) -> pa.Table:
    """The clips whose fingerprint has a layout (at least one keyframe not flat): an
    all-flat clip's fingerprint is the zero vector, which agrees with nothing, and a clip
    curated before the column has none."""
    table = table.filter(pc.is_valid(table.column(COLUMN)))
    if table.num_rows == 0:
        return table
    return table.filter(pa.array(np.linalg.norm(_matrix(table.column(COLUMN)), axis=1) > 0.5))


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
    return pc.list_flatten(vectors).to_numpy().astype(np.float32).reshape(len(vectors), vectors.type.list_size)


def _keepers(ds: lance.LanceDataset, pairs: set[Pair]) -> dict[str, str]:
    """Which clip each copy defers to. The clips of the pairs are taken best first (the
    highest aesthetic score, then the most pixels, then the most frames, then the smallest
    id); one that no kept clip copies is kept, and its copies not yet decided defer to it.
    A copy must match its kept clip itself: grouping chains instead (A like B, B like C, C
    unlike A) would let one clip stand for footage that only resembles it at one remove,
    and collapse a dense cloud of similar shots into a single kept clip. The ranking
    columns are read whole and filtered in Arrow: a filter naming every copy would grow
    with them."""
    partners: dict[str, list[str]] = {}
    for a, b in sorted(pairs):
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    table = ds.to_table(columns=["clip_id", "aesthetic", "video_width", "video_height", "num_frames"])
    wanted = pa.array(sorted(partners), pa.string())
    by_id = {row["clip_id"]: row for row in table.filter(pc.is_in(table.column("clip_id"), value_set=wanted)).to_pylist()}

    def rank(clip_id: str) -> tuple:
        row = by_id[clip_id]
        aesthetic = row["aesthetic"] if row["aesthetic"] is not None and not math.isnan(row["aesthetic"]) else -math.inf
        return (-aesthetic, -(row["video_width"] * row["video_height"]), -row["num_frames"], clip_id)

    copies: dict[str, str] = {}
    kept: set[str] = set()
    for clip_id in sorted(by_id, key=rank):
        if clip_id in copies:
            continue
        kept.add(clip_id)
        for other in partners[clip_id]:
            if other in by_id and other not in copies and other not in kept:
                copies[other] = clip_id
    log.info("near-duplicates: %d copies of %d kept clips", len(copies), len(set(copies.values())))
    return copies
