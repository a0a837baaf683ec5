"""Turn the user's inputs into a list of media items: files, folders, globs and manifests.

Everything goes through ``pyarrow.fs``, so local paths and ``s3://``-style URIs are listed
and read the same way. Manifests are CSV, JSONL or Parquet with a path-or-URI column and an
optional caption column (the column names WebVid and LAION ship are recognised). A
``name.txt`` beside ``name.mp4`` is that file's caption. A manifest row that cannot be used
becomes a reject here; nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_EXTENSIONS = {".csv", ".jsonl", ".parquet"}
PATH_COLUMNS = ("path", "uri", "url", "file", "filepath", "video", "image", "contentUrl", "URL")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "name", "prompt")

Kind = Literal["video", "image"]


@dataclass(frozen=True)
class MediaItem:
    """One input file to curate."""

    uri: str
    kind: Kind
    caption: Optional[str] = None


@dataclass(frozen=True)
class InputReject:
    """An input that yielded nothing, with where and why."""

    source: str
    kind: str
    stage: str
    reason: str


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path inside it, for a local path or any URI pyarrow knows."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{fs.type_name}://{path}"


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def media_kind(path: str) -> Optional[Kind]:
    ext = PurePosixPath(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def expand_inputs(inputs: list[str]) -> tuple[list[MediaItem], list[InputReject]]:
    """All media items named by ``inputs``, deduplicated by URI, in a stable order.

    A manifest's entry wins over the same file found by a folder scan (it has the caption).
    """
    items: dict[str, MediaItem] = {}
    rejects: list[InputReject] = []
    scanned: list[tuple[pafs.FileSystem, str]] = []
    for raw in inputs:
        fs, path = resolve(raw)
        if any(ch in raw for ch in "*?["):
            scanned += _glob(fs, raw, path)
            continue
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            scanned += [(fs, i.path) for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
        elif info.type == pafs.FileType.File:
            scanned.append((fs, path))
        else:
            rejects.append(InputReject(raw, "input", "source", "no such file, folder or glob match"))
    manifests = [(fs, p) for fs, p in scanned if PurePosixPath(p).suffix.lower() in MANIFEST_EXTENSIONS]
    for fs, path in scanned:
        kind = media_kind(path)
        if kind is not None:
            items.setdefault(to_uri(fs, path), MediaItem(to_uri(fs, path), kind, _sidecar_caption(fs, path)))
    for fs, path in manifests:
        manifest_items, manifest_rejects = read_manifest(fs, path)
        rejects += manifest_rejects
        for item in manifest_items:
            items[item.uri] = item
    return sorted(items.values(), key=lambda i: i.uri), rejects


def read_manifest(fs: pafs.FileSystem, path: str) -> tuple[list[MediaItem], list[InputReject]]:
    """Rows of a CSV / JSONL / Parquet manifest; unusable rows become rejects."""
    name = to_uri(fs, path)
    try:
        table = _read_table(fs, path)
    except (pa.ArrowInvalid, OSError) as err:
        return [], [InputReject(name, "manifest", "source", f"unreadable manifest: {err}")]
    path_col = next((c for c in PATH_COLUMNS if c in table.column_names), None)
    if path_col is None:
        reason = f"manifest has no path column (looked for {', '.join(PATH_COLUMNS)})"
        return [], [InputReject(name, "manifest", "source", reason)]
    caption_col = next((c for c in CAPTION_COLUMNS if c in table.column_names), None)
    paths = table.column(path_col).to_pylist()
    captions = table.column(caption_col).to_pylist() if caption_col else [None] * len(paths)
    base = str(PurePosixPath(path).parent)
    items, rejects = [], []
    for row, (entry, caption) in enumerate(zip(paths, captions)):
        where = f"{name}#row{row}"
        if not isinstance(entry, str) or not entry.strip():
            rejects.append(InputReject(where, "manifest-row", "source", f"empty {path_col!r}"))
            continue
        entry = entry.strip()
        if entry.startswith(("http://", "https://")):
            rejects.append(InputReject(entry, "manifest-row", "source", "http(s) URLs are not fetched; download the files first"))
            continue
        if "://" not in entry and not os.path.isabs(entry):
            entry = to_uri(fs, f"{base}/{entry}")
        kind = media_kind(entry)
        if kind is None:
            rejects.append(InputReject(entry, "manifest-row", "source", "not a known video or image extension"))
            continue
        items.append(MediaItem(entry, kind, caption if isinstance(caption, str) else None))
    return items, rejects


def _read_table(fs: pafs.FileSystem, path: str) -> pa.Table:
    ext = PurePosixPath(path).suffix.lower()
    if ext == ".parquet":
        return pq.read_table(path, filesystem=fs)
    with fs.open_input_stream(path) as f:
        if ext == ".csv":
            return pacsv.read_csv(f)
        return pajson.read_json(f)


def _glob(fs: pafs.FileSystem, raw: str, path: str) -> list[tuple[pafs.FileSystem, str]]:
    if isinstance(fs, pafs.LocalFileSystem):
        return [(fs, os.path.abspath(p)) for p in sorted(glob.glob(path, recursive=True)) if os.path.isfile(p)]
    prefix = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return [(fs, i.path) for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]


def _sidecar_caption(fs: pafs.FileSystem, path: str) -> Optional[str]:
    sidecar = str(PurePosixPath(path).with_suffix(".txt"))
    if fs.get_file_info(sidecar).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(sidecar) as f:
        return f.read().decode("utf-8", errors="replace").strip() or None
