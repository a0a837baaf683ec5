"""Hostile inputs cost nothing: a folder holding a loop, a link out of the tree, a file name
that is not UTF-8 and a manifest whose rows point the filesystem at another endpoint curates
to completion through ``python -m pipeline curate``, every entry accounted for, with and
without ``--follow-symlinks``; and a pipeline that loses its Ray workers ends in retryable
rejects, not a failed job."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.tables import CLIPS, IMAGES, REJECTS
from support.synthetic import ShotSpec, photo_like, write_video

ARGS = ["--preset", "tiny", "--quiet", "--set", "curation.commit_every_s=0",
        "--set", 'curation.allowed_roots=["/", "s3://corpus/"]']


class Listener:
    """A TCP socket listening on 127.0.0.1 that records every connection made to it: where
    a manifest row would send the filesystem, if curation let it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, address = self.sock.accept()
            except socket.timeout:
                continue
            self.connections.append(address)
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, listener) -> dict[str, Path | str]:
    """in/{good.mp4, caf\\xe9.mp4, loop -> in, out -> ../outside, rows.parquet} and
    outside/photo.png; rows.parquet names the allowed bucket through queries that point its
    filesystem at the listener, and a bucket outside the allowed roots."""
    root = tmp_path_factory.mktemp("hostile")
    folder, outside = root / "in", root / "outside"
    folder.mkdir()
    outside.mkdir()
    good = write_video(folder / "good.mp4", [ShotSpec("pan", 36, seed=1), ShotSpec("static", 36, seed=2)])
    shutil.copyfile(good.path, os.fsencode(folder) + "/caf\xe9.mp4".encode("latin-1"))
    (folder / "loop").symlink_to(folder)
    (folder / "out").symlink_to(outside)
    Image.fromarray(photo_like(180, 320, seed=3)).save(outside / "photo.png")
    endpoint = f"scheme=http&endpoint_override=127.0.0.1:{listener.port}"
    rows = {"query": f"s3://corpus/k.mp4?{endpoint}",  # as a row would name a file's options
            # ends in .mp4 as a media file does: before the refusal, the worker's probe opened it
            # and the listener took 31 connections
            "sneaky": f"s3://corpus/k?region=us-east-1&{endpoint}/x.mp4",
            "elsewhere": "s3://elsewhere/k.mp4"}
    pq.write_table(pa.table({"path": list(rows.values())}), folder / "rows.parquet")
    return {"folder": folder, **rows}


def _curate(folder: Path, out: Path, *flags: str) -> None:
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(folder), "--out", str(out), *ARGS, *flags],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _sources(out: Path, name: str) -> dict[str, dict]:
    return {r["source"]: r for r in lance.dataset(str(out / name)).to_table().to_pylist()}


@pytest.mark.slow
@pytest.mark.parametrize("follow", [False, True], ids=["links-refused", "follow-symlinks"])
def test_a_hostile_folder_curates_with_every_entry_accounted_for(hostile, listener, tmp_path, follow: bool) -> None:
    folder = hostile["folder"]
    _curate(folder, tmp_path / "out", *(["--follow-symlinks"] if follow else []))
    clips, images = _sources(tmp_path / "out", CLIPS), _sources(tmp_path / "out", IMAGES)
    rejects = {source: row["reason"] for source, row in _sources(tmp_path / "out", REJECTS).items()}
    assert set(clips) == {str(folder / "good.mp4")}
    assert "not valid UTF-8" in rejects[f"{folder}/caf\\xe9.mp4"]
    if follow:
        assert "listed already" in rejects[str(folder / "loop")]
        assert set(images) == {str(folder / "out" / "photo.png")}  # the folder outside, through its link
    else:
        assert "not followed" in rejects[str(folder / "loop")] and "not followed" in rejects[str(folder / "out")]
        assert not images
    assert "query string" in rejects[hostile["query"]] and "query string" in rejects[hostile["sneaky"]]
    assert "outside the allowed roots" in rejects[hostile["elsewhere"]]
    # every entry of the folder is in exactly one table (the manifest's, through its rows above)
    assert len(rejects) == (5 if follow else 6) and not set(rejects) & (set(clips) | set(images))
    accounted = set(clips) | set(images) | set(rejects)
    for name in os.listdir(os.fsencode(folder)):
        shown = str(folder / name.decode("utf-8", "backslashreplace"))
        if name != b"rows.parquet":
            assert (f"{shown}/photo.png" if follow and name == b"out" else shown) in accounted, shown
    assert listener.connections == []  # no row reached the endpoint its query named


@pytest.mark.slow
def test_a_pipeline_that_loses_its_workers_ends_in_retryable_rejects(ray_local, tmp_path, monkeypatch) -> None:
    """Ray's OutOfMemoryError on one unit, every time. Injected where the driver reads the
    pipeline's records, as ``ray.get`` raises a real one there: Ray's memory monitor cannot be
    aimed at one unit (set low, it kills Ray Data's own actors too and the job hangs), and an
    error raised by a stage's code arrives as a UserCodeException instead. The other units
    are curated, that one is planned and run again ``max_retries`` times, then its image is a
    retryable reject naming the loss and its planned reject stays itself; the job finishes,
    and the next run curates the image."""
    from ray.exceptions import OutOfMemoryError

    from curation import job

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in range(3):
        Image.fromarray(photo_like(96, 128, seed=seed)).save(corpus / f"p{seed}.png")
    inputs = [str(tmp_path / "absent.png"), str(corpus)]  # units: [absent, p0], [p1, p2]
    config = load_config("tiny", overrides=["curation.images_per_task=2", "curation.max_retries=1",
                                            "curation.commit_every_s=0"])
    records, rounds = job._records, []

    def losing(ds):
        """The real pipeline's records but the one of the unit with one image, lost to Ray
        each time (the error comes once the other unit is back, so the test has one outcome)."""
        rounds.append(ds)
        for record in records(ds):
            if record["images"] != 1:
                yield record
        raise OutOfMemoryError("Task was killed due to the node running low on memory.")

    monkeypatch.setattr(job, "_records", losing)
    summary = job.curate(inputs, tmp_path / "out", config, progress=False)
    assert len(rounds) == 2  # the whole plan, then what it left once more (max_retries=1)
    assert set(_sources(tmp_path / "out", IMAGES)) == {str(corpus / "p1.png"), str(corpus / "p2.png")}
    rejects = _sources(tmp_path / "out", REJECTS)
    lost = rejects[str(corpus / "p0.png")]
    assert lost["stage"] == "worker" and lost["retryable"] and lost["attempts"] == 1
    assert "OutOfMemoryError" in lost["reason"] and "the next run tries it again" in lost["reason"]
    absent = rejects[str(tmp_path / "absent.png")]
    assert absent["stage"] == "source" and not absent["retryable"]
    assert summary["this_run"]["files"] == 4 and summary["rejects"]["retryable"] == 1

    monkeypatch.setattr(job, "_records", records)
    job.curate(inputs, tmp_path / "out", config, progress=False)
    assert len(_sources(tmp_path / "out", IMAGES)) == 3 and set(_sources(tmp_path / "out", REJECTS)) == {
        str(tmp_path / "absent.png")}
