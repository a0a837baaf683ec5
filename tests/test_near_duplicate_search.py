"""The near-duplicate search on tables too large to compare exactly: partitions from Lance's
IVF k-means, each compared by one matrix product, in Ray tasks (a shuffle through the object
store) or in one process. Planted copies sit at cosine 0.91, just over the 0.9 threshold,
so that some of them fall in another partition than their original's: the search must
find those through the partitions it probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lance

from curation.near_duplicates import has_index, near_duplicates
from pipeline.config.schema import NearDuplicatesConfig
from pipeline.tables import CLIPS
from support.synthetic import write_planted_fingerprints

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
