"""The results location: every job's request, record and video as files, through ``pyarrow.fs``.

Job state lives here rather than in any process, so that losing a replica, or restarting
the whole application, loses nothing: a job is fully described by its stored request, any
job store can pick up the records it finds, and finished videos are served from here.

    <root>/requests/<id>.npz   the decoded image and the parameters (no pickles)
    <root>/jobs/<id>.json      the job's record: status, attempts, times, error
    <root>/videos/<id>.mp4     the result

A local folder by default; on a cluster of several nodes, a location every node reaches
(``s3://bucket/prefix``, ``gs://...``, or a shared mount).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow.fs as pafs

from pipeline.generation.request import GenerationRequest

# Job ids are uuid4 hex: nothing a client sends can name another path.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def new_job_id() -> str:
    return uuid.uuid4().hex


class ResultsLocation:
    """Files of the jobs under one root (a local path or a URI ``pyarrow.fs`` opens)."""

    def __init__(self, root: str) -> None:
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
        self.uri = root
        for folder in ("requests", "jobs", "videos"):
            self.fs.create_dir(f"{self.root}/{folder}", recursive=True)

    def _path(self, folder: str, job_id: str, suffix: str) -> str:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{self.root}/{folder}/{job_id}{suffix}"

    def _write(self, path: str, data: bytes) -> None:
        """Whole or not at all: a reader never sees half a file (a rename on local disks)."""
        partial = f"{path}.{uuid.uuid4().hex[:8]}.partial"
        with self.fs.open_output_stream(partial) as stream:
            stream.write(data)
        self.fs.move(partial, path)

    def _read(self, path: str) -> Optional[bytes]:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def save_request(self, job_id: str, request: GenerationRequest) -> None:
        parameters = {f.name: getattr(request, f.name) for f in fields(request) if f.name != "image"}
        buffer = io.BytesIO()
        np.savez(buffer, image=request.image, parameters=np.array(json.dumps(parameters)))
        self._write(self._path("requests", job_id, ".npz"), buffer.getvalue())

    def load_request(self, job_id: str) -> GenerationRequest:
        data = self._read(self._path("requests", job_id, ".npz"))
        if data is None:
            raise FileNotFoundError(f"job {job_id}: its request is not in {self.uri}")
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return GenerationRequest(image=stored["image"], **json.loads(str(stored["parameters"])))

    def save_record(self, record: dict[str, Any]) -> None:
        self._write(self._path("jobs", record["id"], ".json"), json.dumps(record).encode())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every job record stored, in no particular order (unreadable ones are skipped)."""
        selector = pafs.FileSelector(f"{self.root}/jobs", allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                try:
                    record = json.loads(self._read(info.path) or b"null")
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record

    def save_video(self, job_id: str, mp4: bytes) -> None:
        self._write(self._path("videos", job_id, ".mp4"), mp4)

    def video(self, job_id: str) -> Optional[bytes]:
        return self._read(self._path("videos", job_id, ".mp4"))

    def forget_request(self, job_id: str) -> None:
        """A finished job needs its request no more."""
        self._delete(self._path("requests", job_id, ".npz"))

    def forget(self, job_id: str) -> None:
        """Delete everything of a job: request, video and record."""
        for folder, suffix in (("requests", ".npz"), ("videos", ".mp4"), ("jobs", ".json")):
            self._delete(self._path(folder, job_id, suffix))


def request_parameters(request: GenerationRequest) -> dict[str, Any]:
    """What a job's record shows of its request (everything but the pixels)."""
    return {f.name: getattr(request, f.name) for f in fields(request) if f.name not in ("image", "refine_from")}
