"""The near-duplicate search on tables too large to compare exactly: partitions from Lance's
IVF k-means, each compared by one matrix product, in Ray tasks (a shuffle through the object
store) or in one process. Planted copies sit at cosine 0.91, just over the 0.9 threshold,
so that some of them fall in another partition than their original's: the search must
find those through the partitions it probes. And a copy defers only to a kept clip it
matches itself, never through a chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np

from curation.near_duplicates import has_index, near_duplicates
from pipeline.config.schema import NearDuplicatesConfig
from pipeline.tables import CLIPS, FINGERPRINT
from support.synthetic import write_fingerprint_table, write_planted_fingerprints

ROWS, COPIES, COSINE = 3000, 300, 0.91
PARTITIONED = NearDuplicatesConfig(index_min_rows=1000)  # sqrt(3000): 54 partitions


def _planted(folder: Path) -> tuple[Path, dict[str, str]]:
    uri = folder / CLIPS
    return uri, write_planted_fingerprints(uri, ROWS, COPIES, cosine=COSINE, fragments=5)


def test_partitions_probed_find_the_copies_across_their_boundaries(tmp_path: Path, ray_local) -> None:
    uri, planted = _planted(tmp_path)
    assert PARTITIONED.min_similarity < COSINE and PARTITIONED.partitions_probed > 1

    own_partition_only = near_duplicates(uri, NearDuplicatesConfig(index_min_rows=1000, partitions_probed=1))
    # Every pair found is planted, and some planted ones lie across a partition boundary
    # (about 7% of them; all 300 on one side would happen with odds of about 1e-9).
    assert set(own_partition_only.items()) < set(planted.items())

    assert near_duplicates(uri, PARTITIONED) == planted
    assert has_index(lance.dataset(str(uri)))  # for curate search
    assert near_duplicates(uri, NearDuplicatesConfig()) == planted  # the exact pass: one partition


def test_the_search_without_ray_finds_the_same(tmp_path: Path) -> None:
    """A process without Ray (a script, a notebook) runs the same search in itself."""
    uri, planted = _planted(tmp_path)
    code = ("import json, sys, ray; from pathlib import Path; from curation.near_duplicates import near_duplicates;"
            "from pipeline.config.schema import NearDuplicatesConfig;"
            "found = near_duplicates(Path(sys.argv[1]), NearDuplicatesConfig(index_min_rows=1000));"
            "assert not ray.is_initialized(); print(json.dumps(found))")
    run = subprocess.run([sys.executable, "-c", code, str(uri)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == planted


def _chain_table(uri: Path, best: str) -> None:
    """Three clips in a chain: a and b agree by 0.95, b and c by 0.95, a and c by only 0.805
    (each a step of the same angle in one plane); ``best`` has the highest aesthetic."""
    step = np.arccos(0.95)
    vectors = np.zeros((3, FINGERPRINT.list_size), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(np.arange(3) * step), np.sin(np.arange(3) * step)
    aesthetic = np.array([6.0 if clip_id == best else 5.0 - k * 0.1 for k, clip_id in enumerate("abc")])
    write_fingerprint_table(uri, list("abc"), vectors, aesthetic)


def test_a_copy_defers_only_to_a_kept_clip_it_matches_itself(tmp_path: Path) -> None:
    """A chain of matches is not one group: with a the best, b defers to a, and c, which
    matches only b, is kept; with b the best, both defer to it."""
    uri = tmp_path / CLIPS
    assert NearDuplicatesConfig().min_similarity < 0.95 and NearDuplicatesConfig().min_similarity > 0.805
    _chain_table(uri, best="a")
    assert near_duplicates(uri, NearDuplicatesConfig()) == {"b": "a"}
    _chain_table(uri, best="b")
    assert near_duplicates(uri, NearDuplicatesConfig()) == {"a": "b", "c": "b"}
