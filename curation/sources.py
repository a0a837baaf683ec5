"""Turn the user's inputs into a list of media items: files, folders, globs and manifests.

Everything goes through ``pyarrow.fs``, so local paths and ``s3://``-style URIs are listed
and read the same way. Manifests are CSV, JSONL or Parquet with a path-or-URI column and an
optional caption column (the column names WebVid and LAION ship are recognised), and are
read a batch at a time. A ``name.txt`` beside ``name.mp4`` is that file's caption. A manifest row that cannot be used
becomes a reject here; nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
import itertools
from typing import Any, Iterable, Iterator, Literal, Optional

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
    """One input file to curate. A folder scan that finds ``name.txt`` beside the file names
    it in ``caption_uri``; the worker reads it (the driver opens no per-file object)."""

    uri: str
    kind: Kind
    caption: Optional[str] = None
    caption_uri: Optional[str] = None


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


def read_caption(item: MediaItem) -> Optional[str]:
    """The item's caption: the manifest's, else its sidecar file's, else none."""
    if item.caption is not None or item.caption_uri is None:
        return item.caption
    return read_bytes(item.caption_uri).decode("utf-8", errors="replace").strip() or None


def media_kind(path: str) -> Optional[Kind]:
    ext = PurePosixPath(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


@dataclass
class Scan:
    """What the inputs name: media files found by listing (URI -> item), the manifests to
    read, and the inputs that named nothing."""

    media: dict[str, MediaItem]
    manifests: list[tuple[pafs.FileSystem, str]]
    rejects: list[InputReject]


def scan_inputs(inputs: list[str]) -> Scan:
    """List files, folders and globs (manifests are only found here, not read)."""
    rejects: list[InputReject] = []
    scanned: list[tuple[pafs.FileSystem, str]] = []
    for raw in inputs:
        fs, path = resolve(raw)
        info = None if any(ch in raw for ch in "*?[") else fs.get_file_info(path)
        if info is None:
            listing: Iterable[str | InputReject] = _glob(fs, raw, path)
        elif info.type == pafs.FileType.Directory:
            listing = (_walk_local(raw, path) if isinstance(fs, pafs.LocalFileSystem)
                       else _files(raw, fs.get_file_info(pafs.FileSelector(path, recursive=True))))
        elif info.type == pafs.FileType.File:
            listing = [path]
        else:
            listing = [InputReject(raw, "input", "source", "no such file, folder or glob match")]
        for entry in listing:
            if isinstance(entry, InputReject):
                rejects.append(entry)
            else:
                scanned.append((fs, entry))
    listed = {to_uri(fs, path) for fs, path in scanned}
    media: dict[str, MediaItem] = {}
    for fs, path in scanned:
        kind, uri = media_kind(path), to_uri(fs, path)
        if kind is not None:
            sidecar = to_uri(fs, str(PurePosixPath(path).with_suffix(".txt")))
            media.setdefault(uri, MediaItem(uri, kind, caption_uri=sidecar if sidecar in listed else None))
    manifests = [(fs, p) for fs, p in scanned if PurePosixPath(p).suffix.lower() in MANIFEST_EXTENSIONS]
    return Scan(media, manifests, rejects)


def expand_inputs(inputs: list[str]) -> tuple[list[MediaItem], list[InputReject]]:
    """All media items named by ``inputs``, deduplicated by URI, in a stable order (held in
    memory: for tools and tests; the curation job streams ``scan_inputs`` and manifests).

    A manifest's entry wins over the same file found by a folder scan (it has the caption).
    """
    scan = scan_inputs(inputs)
    items, rejects = dict(scan.media), list(scan.rejects)
    for fs, path in scan.manifests:
        for entry in manifest_entries(fs, path):
            if isinstance(entry, MediaItem):
                items[entry.uri] = entry
            else:
                rejects.append(entry)
    return sorted(items.values(), key=lambda i: i.uri), rejects


MANIFEST_BATCH_ROWS = 65536


def manifest_entries(fs: pafs.FileSystem, path: str) -> Iterator[MediaItem | InputReject]:
    """Rows of a CSV / JSONL / Parquet manifest, streamed a batch at a time (a manifest of
    millions of rows is never held whole); unusable rows become rejects."""
    name = to_uri(fs, path)
    try:
        batches = _read_batches(fs, path)
        first = next(batches, None)
    except (pa.ArrowInvalid, OSError) as err:
        yield InputReject(name, "manifest", "source", f"unreadable manifest: {err}")
        return
    if first is None:
        return
    path_col = next((c for c in PATH_COLUMNS if c in first.schema.names), None)
    if path_col is None:
        reason = f"manifest has no path column (looked for {', '.join(PATH_COLUMNS)})"
        yield InputReject(name, "manifest", "source", reason)
        return
    caption_col = next((c for c in CAPTION_COLUMNS if c in first.schema.names), None)
    base = str(PurePosixPath(path).parent)
    row = 0
    try:
        for batch in itertools.chain([first], batches):
            paths = batch.column(path_col).to_pylist()
            captions = batch.column(caption_col).to_pylist() if caption_col else [None] * len(paths)
            for entry, caption in zip(paths, captions):
                yield _manifest_entry(fs, base, f"{name}#row{row}", path_col, entry, caption)
                row += 1
    except (pa.ArrowInvalid, OSError) as err:
        yield InputReject(f"{name}#row{row}", "manifest", "source", f"manifest unreadable from this row on: {err}")


def _manifest_entry(
    fs: pafs.FileSystem, base: str, where: str, path_col: str, entry: Any, caption: Any
) -> MediaItem | InputReject:
    if not isinstance(entry, str) or not entry.strip():
        return InputReject(where, "manifest-row", "source", f"empty {path_col!r}")
    entry = entry.strip()
    if entry.startswith(("http://", "https://")):
        return InputReject(entry, "manifest-row", "source", "http(s) URLs are not fetched; download the files first")
    if "://" not in entry and not os.path.isabs(entry):
        entry = to_uri(fs, f"{base}/{entry}")
    kind = media_kind(entry)
    if kind is None:
        return InputReject(entry, "manifest-row", "source", "not a known video or image extension")
    return MediaItem(entry, kind, caption if isinstance(caption, str) else None)


def _read_batches(fs: pafs.FileSystem, path: str) -> Iterator[pa.RecordBatch]:
    ext = PurePosixPath(path).suffix.lower()
    if ext == ".parquet":
        yield from pq.ParquetFile(fs.open_input_file(path)).iter_batches(batch_size=MANIFEST_BATCH_ROWS)
        return
    with fs.open_input_stream(path) as f:
        reader = pacsv.open_csv(f) if ext == ".csv" else pajson.open_json(f)
        yield from reader


def _glob(fs: pafs.FileSystem, raw: str, path: str) -> Iterator[str | InputReject]:
    if isinstance(fs, pafs.LocalFileSystem):
        for match in sorted(glob.glob(path, recursive=True)):
            if not os.path.isfile(match):
                continue
            try:
                match.encode("utf-8")  # glob hands an undecodable name back with surrogates
            except UnicodeEncodeError:
                yield _undecodable(raw, os.fsencode(match))
                continue
            yield os.path.abspath(match)
        return
    prefix = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    for entry in _files(raw, fs.get_file_info(pafs.FileSelector(prefix, recursive=True))):
        if isinstance(entry, InputReject) or fnmatch.fnmatch(entry, path):
            yield entry


def _files(raw: str, infos: list[pafs.FileInfo]) -> Iterator[str | InputReject]:
    """The paths of the files among a listing's entries. A name that is not valid UTF-8 (the
    tables hold text) is a reject naming its bytes, and the listing goes on."""
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        try:
            yield info.path
        except UnicodeDecodeError as err:  # pyarrow decodes the name on reading it
            yield _undecodable(raw, err.object)


def _walk_local(raw: str, root: str) -> Iterator[str | InputReject]:
    """A local folder's regular files, recursively, in a stable order. Links to folders
    below it are not followed (a link to ``/etc`` or a loop would list the machine); each
    is a reject that says how to curate its target. Names go through as bytes, so one that
    is not UTF-8 becomes a reject, not an error, and so does a folder that cannot be read."""
    unreadable: list[OSError] = []
    for folder, subfolders, files in os.walk(os.fsencode(root), onerror=unreadable.append, followlinks=False):
        subfolders.sort()
        for name in subfolders:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                yield InputReject(path.decode("utf-8", errors="backslashreplace"), "input", "source",
                                  f"a link to a folder, not followed (listed under {raw}); pass its target as an input")
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):  # a device, a socket, a dangling link
                continue
            try:
                yield path.decode("utf-8")
            except UnicodeDecodeError:
                yield _undecodable(raw, path)
    for err in unreadable:
        name = os.fsencode(err.filename or root).decode("utf-8", errors="backslashreplace")
        yield InputReject(name, "input", "source", f"cannot list this folder (under {raw}): {err.strerror}")


def _undecodable(raw: str, name: bytes) -> InputReject:
    return InputReject(name.decode("utf-8", errors="backslashreplace"), "input", "source",
                       f"the file name is not valid UTF-8 (listed under {raw}); rename it to curate it")
