"""A real two-node Ray cluster on 127.0.0.1: ``ray start`` a head and a second node with a
custom resource, ``ray job submit --working-dir`` the curation job, and check that it
succeeded, wrote its tables, and ran tasks on both nodes; and a driver that joins the
cluster compacts a table with tasks on both nodes. Everything started here is stopped
here, by process group, so the test's own Ray and any other cluster are untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import lance
import pytest

from pipeline.local_cluster import RAY, local_cluster
from support.synthetic import write_sample_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("cluster_logs"), worker_resources='{"curation_node": 1}') as running:
        yield running


@pytest.mark.slow
def test_curation_submitted_as_a_ray_job_runs_on_both_nodes(cluster, tmp_path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_nodes, list_tasks

    dashboard = cluster.dashboard

    corpus, out = tmp_path / "corpus", tmp_path / "curated"
    write_sample_corpus(corpus, videos=3, seed=2)
    submission = f"curate-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", dashboard, "--submission-id", submission, "--working-dir", str(REPO),
         "--runtime-env", "clusters/runtime_env.yaml", "--",
         # The second node's workers start seconds after the head's (the working directory is
         # unpacked there first), and a job this small could end before; Ray Data's own
         # setting holds the units back until the whole pool is up.
         "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=300", "python", "-m", "pipeline", "curate", str(corpus),
         "--out", str(out), "--preset", "tiny", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    client = JobSubmissionClient(dashboard)
    assert client.get_job_status(submission) == JobStatus.SUCCEEDED, proc.stdout[-4000:] + proc.stderr[-2000:]
    clips = lance.dataset(str(out / "clips.lance")).to_table(columns=["clip_id", "keep"])
    rejects = lance.dataset(str(out / "rejects.lance")).to_table(columns=["source", "reason"])
    assert clips.num_rows >= 6 and rejects.num_rows >= 3  # shots of 3 videos; the broken files
    job_id = client.get_job_info(submission).job_id
    tasks = list_tasks(address=dashboard, filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
    worked = {t.node_id for t in tasks if "FileStage" in t.name and t.name.endswith(".submit")}
    assert worked == {n.node_id for n in list_nodes(address=dashboard)}, f"units ran on {len(worked)} of 2 nodes"
    # the same corpus curated on one machine gives the same tables
    local = tmp_path / "local"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(corpus), "--out", str(local), "--preset",
                           "tiny", "--quiet"], capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, columns in (("clips.lance", ["clip_id", "keep", "weight"]), ("rejects.lance", ["source", "stage"])):
        here, there = (lance.dataset(str(d / name)).to_table(columns=columns).to_pylist() for d in (local, out))
        assert sorted(map(str, here)) == sorted(map(str, there)), name


# A driver on the cluster: test_compaction's table (12 appended fragments of 10 rows of 20 KB,
# one row deleted), compacted in Ray tasks into fragments of about 40 rows each; prints what
# compaction did and whether every value came through.
COMPACT_ON_THE_CLUSTER = """
import json, sys
from pathlib import Path
import lance, ray
sys.path.insert(0, "tests")
import pipeline.compaction as compaction
from test_compaction import ROW_BYTES, _contents, _table

uri, media = _table(Path(sys.argv[1]))
ray.init()
compaction.TARGET_FRAGMENT_BYTES = 40 * ROW_BYTES
done = compaction.compact(uri, in_process_bytes=0)
print(json.dumps({"where": done.where, "tasks": done.tasks, "nodes": done.nodes, "same": _contents(uri) == media,
                  "fragments": len(lance.dataset(uri).get_fragments())}))
"""


@pytest.mark.slow
def test_a_driver_on_the_cluster_compacts_with_tasks_on_both_nodes(cluster, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", COMPACT_ON_THE_CLUSTER, str(tmp_path)],
                          env={**cluster.env, "RAY_ADDRESS": cluster.gcs}, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["where"] == "ray" and done["tasks"] >= 2 and done["fragments"] == done["tasks"]
    assert done["nodes"] == 2, done  # spread: each node rewrites what it was given, the driver none
    assert done["same"]


@pytest.mark.slow
def test_outside_the_test_suite_a_local_cluster_requires_its_token(tmp_path, monkeypatch) -> None:
    """With no auth mode chosen, as in the product, the cluster runs with token auth: a job
    submitted without its token is refused, one with it runs, and so does a driver that
    joins by address with the cluster's environment; the caller's state API calls carry it."""
    from ray.exceptions import AuthenticationError
    from ray.util.state import list_nodes

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with local_cluster(tmp_path / "logs", cpus_per_node=1) as cluster:
        outsider = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        job = [RAY, "job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "print('the job ran')"]
        refused = subprocess.run(job, env=outsider, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr
        ran = subprocess.run(job, env=cluster.env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0 and "the job ran" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-2000:]
        driver = [sys.executable, "-c", "import ray; ray.init(); print('cpus', int(ray.cluster_resources()['CPU']))"]
        joined = subprocess.run(driver, env={**cluster.env, "RAY_ADDRESS": cluster.gcs}, capture_output=True,
                                text=True, timeout=300)
        assert "cpus 2" in joined.stdout, joined.stderr[-3000:]
        assert len(cluster.state("nodes")) == 2
        with pytest.raises(AuthenticationError):
            list_nodes(address=cluster.dashboard)  # this process holds no token of its own
