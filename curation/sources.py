"""Turn the user's inputs into a list of media items: files, folders, globs and manifests.

Everything goes through ``pyarrow.fs``, so local paths and ``s3://``-style URIs are listed
and read the same way. Manifests are CSV, JSONL or Parquet with a path-or-URI column and an
optional caption column (the column names WebVid and LAION ship are recognised), and are
read a batch at a time. A ``name.txt`` beside ``name.mp4`` is that file's caption. A manifest row that cannot be used
becomes a reject here; nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator, Literal, Optional
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.config.schema import CurationConfig

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_EXTENSIONS = {".csv", ".jsonl", ".parquet"}
GLOB_MAGIC = "*?["
# Schemes that pyarrow takes for the same filesystem (it names listed files by the second).
SCHEME_ALIASES = {"gs": "gcs"}
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


class Roots:
    """The URI prefixes a manifest row may name: ``curation.allowed_roots`` and the roots of
    the command-line inputs. A manifest is data, often from elsewhere: a row may not point the
    job's credentials at another bucket, nor its filesystem at another endpoint."""

    def __init__(self, allowed: Iterable[str], inputs: Iterable[str]) -> None:
        self.prefixes = sorted({_root_key(root) for root in itertools.chain(allowed, map(_input_root, inputs))})

    def refusal(self, uri: str) -> Optional[str]:
        """Why a manifest row may not name ``uri``, or None when it may. A query string is
        refused whatever the root: pyarrow reads ``?endpoint_override=``, ``scheme=``,
        ``access_key=`` and more from it, which would send the read (and its credentials)
        wherever the row says."""
        if "://" in uri and ("?" in uri or "#" in uri):
            return ("a URI with a query string or fragment is refused "
                    "(it can reconfigure the filesystem: endpoint, credentials)")
        key = _root_key(uri)
        if any(key == root or key.startswith(root.rstrip("/") + "/") for root in self.prefixes):
            return None
        return (f"outside the allowed roots ({', '.join(self.prefixes)}); "
                "add its bucket or folder to curation.allowed_roots to curate it")


def _root_key(uri: str) -> str:
    """``uri`` in the one form roots are compared in: a local path absolute and normalised
    (``/data/../etc`` is ``/etc``), a remote one as ``scheme://bucket/key`` normalised alike."""
    if "://" not in uri:
        return os.path.normpath(os.path.abspath(uri))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return os.path.normpath(unquote(parts.path) or "/")
    where = parts.netloc + parts.path
    return f"{SCHEME_ALIASES.get(scheme, scheme)}://{posixpath.normpath(where) if where else ''}"


def _input_root(raw: str) -> str:
    """What a command-line input vouches for: a remote input's bucket (its manifests name
    files across it), a local input's folder (a file's or a glob's own folder)."""
    if "://" in raw:
        parts = urlsplit(raw)
        return f"{parts.scheme}://{parts.netloc}/"
    path = os.path.abspath(raw)
    if any(ch in raw for ch in GLOB_MAGIC):
        return _glob_base(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


@dataclass
class Scan:
    """What the inputs name: media files found by listing (URI -> item), the manifests to
    read, the inputs that named nothing, and the roots the manifests' rows may name."""

    media: dict[str, MediaItem]
    manifests: list[tuple[pafs.FileSystem, str]]
    rejects: list[InputReject]
    roots: Roots


def scan_inputs(inputs: list[str], cfg: CurationConfig) -> Scan:
    """List files, folders and globs (manifests are only found here, not read); folder
    links are followed with ``cfg.follow_symlinks`` only."""
    rejects: list[InputReject] = []
    scanned: list[tuple[pafs.FileSystem, str]] = []
    for raw in inputs:
        fs, path = resolve(raw)
        info = None if any(ch in raw for ch in GLOB_MAGIC) else fs.get_file_info(path)
        if info is None:
            listing: Iterable[str | InputReject] = _glob(fs, raw, path, cfg.follow_symlinks)
        elif info.type == pafs.FileType.Directory:
            listing = (_walk_local(raw, path, cfg.follow_symlinks) if isinstance(fs, pafs.LocalFileSystem)
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
    return Scan(media, manifests, rejects, Roots(cfg.allowed_roots, inputs))


def expand_inputs(inputs: list[str], cfg: Optional[CurationConfig] = None) -> tuple[list[MediaItem], list[InputReject]]:
    """All media items named by ``inputs``, deduplicated by URI, in a stable order (held in
    memory: for tools and tests; the curation job streams ``scan_inputs`` and manifests).

    A manifest's entry wins over the same file found by a folder scan (it has the caption).
    """
    scan = scan_inputs(inputs, cfg or CurationConfig())
    items, rejects = dict(scan.media), list(scan.rejects)
    for fs, path in scan.manifests:
        for entry in manifest_entries(fs, path, scan.roots):
            if isinstance(entry, MediaItem):
                items[entry.uri] = entry
            else:
                rejects.append(entry)
    return sorted(items.values(), key=lambda i: i.uri), rejects


MANIFEST_BATCH_ROWS = 65536


def manifest_entries(fs: pafs.FileSystem, path: str, roots: Roots) -> Iterator[MediaItem | InputReject]:
    """Rows of a CSV / JSONL / Parquet manifest, streamed a batch at a time (a manifest of
    millions of rows is never held whole); unusable rows, and rows naming a URI outside
    ``roots``, become rejects."""
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
                yield _manifest_entry(fs, base, f"{name}#row{row}", path_col, entry, caption, roots)
                row += 1
    except (pa.ArrowInvalid, OSError) as err:
        yield InputReject(f"{name}#row{row}", "manifest", "source", f"manifest unreadable from this row on: {err}")


def _manifest_entry(
    fs: pafs.FileSystem, base: str, where: str, path_col: str, entry: Any, caption: Any, roots: Roots
) -> MediaItem | InputReject:
    if not isinstance(entry, str) or not entry.strip():
        return InputReject(where, "manifest-row", "source", f"empty {path_col!r}")
    entry = entry.strip()
    if entry.startswith(("http://", "https://")):
        return InputReject(entry, "manifest-row", "source", "http(s) URLs are not fetched; download the files first")
    if "://" not in entry and not os.path.isabs(entry):
        entry = to_uri(fs, f"{base}/{entry}")
    refusal = roots.refusal(entry)
    if refusal is not None:
        return InputReject(entry, "manifest-row", "source", refusal)
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


def _glob_base(path: str) -> str:
    """The deepest folder of a glob pattern without a wildcard in it: where its listing starts."""
    parts = path.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in GLOB_MAGIC))
    return "/".join(parts[:fixed]) or "/"


def _glob(fs: pafs.FileSystem, raw: str, path: str, follow: bool) -> Iterator[str | InputReject]:
    """A glob's files. A local one is matched while walking its base folder, so it follows
    links to folders (``**`` included) under the same rules as a folder scan."""
    base = _glob_base(path)
    if isinstance(fs, pafs.LocalFileSystem):
        if os.path.isdir(base):
            yield from _walk_local(raw, base, follow, tuple(path[len(base):].strip("/").split("/")))
        return
    for entry in _files(raw, fs.get_file_info(pafs.FileSelector(base, recursive=True))):
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


def _walk_local(raw: str, root: str, follow: bool, pattern: Optional[tuple[str, ...]] = None
                ) -> Iterator[str | InputReject]:
    """A local folder's regular files, recursively, in a stable order; with ``pattern`` (a
    glob's parts below ``root``) only those it matches, walking only folders that can hold
    a match. Links to folders are followed only with ``follow`` (a link to ``/etc`` would
    list the machine), and then each real folder is listed once: a loop back up, or a second
    link to a folder, is a reject naming it rather than an endless walk. Names go through as
    bytes, so one that is not UTF-8 becomes a reject, not an error, and so does a folder that
    cannot be read."""
    unreadable: list[OSError] = []
    top = os.fsencode(root)
    listed = {_folder_id(top)}
    for folder, subfolders, files in os.walk(top, onerror=unreadable.append, followlinks=follow):
        below = tuple(os.fsdecode(n) for n in folder[len(top):].split(b"/") if n)
        entered = []
        for name in sorted(subfolders):
            if pattern is not None and not _may_hold(below + (os.fsdecode(name),), pattern):
                continue
            refused = _refuse_folder(raw, os.path.join(folder, name), follow, listed)
            if refused is None:
                entered.append(name)
            else:
                yield refused
        subfolders[:] = entered
        yield from _local_files(raw, folder, sorted(files), below, pattern)
    for err in unreadable:
        yield _folder_reject(raw, os.fsencode(err.filename or root), f"cannot list this folder: {err.strerror}")


def _local_files(raw: str, folder: bytes, names: list[bytes], below: tuple[str, ...],
                 pattern: Optional[tuple[str, ...]]) -> Iterator[str | InputReject]:
    """The regular files among a folder's entries that ``pattern`` matches (all without one;
    ``below``: the folder's path parts under the walk's root), as text; a name that is not
    UTF-8 is a reject naming its bytes."""
    for name in names:
        path = os.path.join(folder, name)
        if pattern is not None and not _matches(below + (os.fsdecode(name),), pattern):
            continue
        if not os.path.isfile(path):  # a device, a socket, a dangling link
            continue
        try:
            yield path.decode("utf-8")
        except UnicodeDecodeError:
            yield _undecodable(raw, path)


def _folder_id(path: bytes) -> tuple[int, int]:
    """The folder a path leads to, links followed: what tells a loop from a new folder."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _refuse_folder(raw: str, path: bytes, follow: bool, listed: set[tuple[int, int]]) -> Optional[InputReject]:
    """None when the walk may go into the subfolder ``path`` (now counted as listed), else
    the reject that says why not."""
    if os.path.islink(path) and not follow:
        return _folder_reject(raw, path, "a link to a folder, not followed; pass its target as an input, "
                                         "or curate with --follow-symlinks")
    try:
        folder = _folder_id(path)
    except OSError as err:
        return _folder_reject(raw, path, f"cannot list this folder: {err.strerror}")
    if folder in listed:
        return _folder_reject(raw, path, "this folder was listed already under another path "
                                         "(a link loop, or a second link to it); not listed again")
    listed.add(folder)
    return None


def _folder_reject(raw: str, path: bytes, reason: str) -> InputReject:
    name = path.decode("utf-8", errors="backslashreplace")
    return InputReject(name, "input", "source", f"{reason} (listed under {raw})")


def _name_matches(name: str, part: str) -> bool:
    """One path part against one pattern part, as ``glob`` matches it: case-sensitive, and a
    hidden name only by a part that starts with a dot."""
    return fnmatch.fnmatchcase(name, part) and (not name.startswith(".") or part.startswith("."))


def _matches(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """A file's path parts below the walk's root against a glob's parts (``**``: any number
    of folders, hidden ones excepted, as ``glob.glob(recursive=True)`` has it)."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return any(_matches(names[skip:], pattern[1:]) for skip in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:skip]))
    return bool(names) and _name_matches(names[0], pattern[0]) and _matches(names[1:], pattern[1:])


def _may_hold(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a folder (its path parts below the walk's root) can hold a match of the glob."""
    if not names:
        return True
    if not pattern:
        return False
    if pattern[0] == "**":
        return not names[0].startswith(".") or _may_hold(names, pattern[1:])
    return _name_matches(names[0], pattern[0]) and _may_hold(names[1:], pattern[1:])


def _undecodable(raw: str, name: bytes) -> InputReject:
    return InputReject(name.decode("utf-8", errors="backslashreplace"), "input", "source",
                       f"the file name is not valid UTF-8 (listed under {raw}); rename it to curate it")
