"""Curation reads ``s3://`` inputs through ``pyarrow.fs`` exactly as local ones.

The bucket is served over HTTP on 127.0.0.1 by moto's S3 server (no network here); pyarrow
finds it through ``AWS_ENDPOINT_URL``, as it would a MinIO or any S3-compatible store. The
same corpus curated from the bucket and from the local disk gives the same clips and
decisions, with the sources named by their ``s3://`` URIs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.synthetic import write_sample_corpus


@pytest.fixture
def bucket_env():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield env
    server.stop()


def _curate(source: str, out: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", source, "--out", str(out), "--preset", "tiny",
                           "--quiet"], capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(out: Path, table: str, columns: list[str]) -> list[tuple]:
    import lance

    data = lance.dataset(str(out / table)).to_table(columns=columns).to_pylist()
    return sorted(tuple(r[c] for c in columns) for r in data)


@pytest.mark.slow
def test_an_s3_corpus_curates_like_the_same_files_on_disk(bucket_env, tmp_path) -> None:
    import boto3

    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, videos=1, seed=3)
    s3 = boto3.client("s3", endpoint_url=bucket_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket="corpus")
    for path in corpus.rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            if path.suffix == ".csv":  # the manifest names its images where they now are: in the bucket
                body = body.replace(str(corpus).encode(), b"s3://corpus/raw")
            s3.put_object(Bucket="corpus", Key=f"raw/{path.relative_to(corpus).as_posix()}", Body=body)

    _curate("s3://corpus/raw", tmp_path / "from_s3", bucket_env)
    _curate(str(corpus), tmp_path / "from_disk", {})

    clips = ["clip_id", "start_frame", "end_frame", "caption", "keep", "drop_reason"]
    assert _rows(tmp_path / "from_s3", "clips.lance", clips) == _rows(tmp_path / "from_disk", "clips.lance", clips)
    images = ["image_id", "caption", "keep"]
    assert _rows(tmp_path / "from_s3", "images.lance", images) == _rows(tmp_path / "from_disk", "images.lance", images)
    sources = {s for (s,) in _rows(tmp_path / "from_s3", "clips.lance", ["source"])}
    assert sources and all(s.startswith("s3://corpus/raw/") for s in sources)
    # every broken file and manifest row is rejected at the same stage (reasons name paths)
    rejects = {(s.replace("s3://corpus/raw", ""), stage)
               for s, stage in _rows(tmp_path / "from_s3", "rejects.lance", ["source", "stage"])}
    assert rejects and rejects == {(s.replace(str(corpus), ""), stage)
                                   for s, stage in _rows(tmp_path / "from_disk", "rejects.lance", ["source", "stage"])}
