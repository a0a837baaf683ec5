"""SHA-256 manifests of a checkpoint's files, written when it is saved and checked before a
resume reads any of it.

DeepSpeed unpickles its shards, and the run folder is shared storage that more than the
training job may be able to write, so a resume first proves that the folder holds exactly
what the ranks saved: each rank lists every file of its part with its digest in
``manifest_rank<r>.json`` (Ray merges the ranks' folders into one checkpoint, manifests
included), and a checkpoint whose manifest is missing, or that has a file missing, changed,
added, or a link in place of one, is refused, naming the file and the step.

A manifest lives in the same folder as the files it vouches for: it catches a changed or
planted file, not someone who rewrites the manifest too. That is why the shards are also
loaded without running pickled code (``training.weights_only``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

MANIFEST_PREFIX = "manifest_rank"
SHOWN_PROBLEMS = 5  # a refusal names this many files, then counts the rest
MAX_RANKS = 1 << 16  # a manifest claiming more ranks is not one a run wrote


class CheckpointRefused(RuntimeError):
    """A checkpoint that does not match its manifests: nothing in it was loaded."""


def manifest_name(rank: int) -> str:
    return f"{MANIFEST_PREFIX}{rank}.json"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stored_files(folder: Path) -> tuple[list[str], list[str]]:
    """The regular files under ``folder``, and everything else that is not a folder (links,
    pipes, devices), as sorted POSIX paths relative to it. Links are not followed, so none
    can pull in outside files, and nothing else is opened, so no pipe can stall a check."""
    files, others = [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or (name in names and not path.is_file()):
                others.append(relative)
            elif name in names:
                files.append(relative)
    return sorted(files), sorted(others)


def write_manifest(folder: Path, rank: int, world_size: int, step: int) -> None:
    """Rank ``rank``'s manifest of every file in its own checkpoint folder, written after
    them and before the folder is reported: the step, how many ranks saved (so a resume
    knows how many manifests to expect) and each file's SHA-256."""
    files, _ = stored_files(folder)
    digests = {name: sha256(folder / name) for name in files}
    manifest = {"step": step, "rank": rank, "world_size": world_size, "files": digests}
    (folder / manifest_name(rank)).write_text(json.dumps(manifest, indent=1))


@dataclass
class Manifests:
    """What the ranks' manifests vouch for: the step, each listed file's digest, and what
    is wrong with the manifests themselves."""

    step: Optional[int] = None
    names: set[str] = field(default_factory=set)  # the manifest files expected
    digests: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_manifests(folder: Path) -> Manifests:
    """Rank 0's manifest says how many ranks saved; every one of their manifests must be
    there, readable, agree on the step, and agree on any file two ranks both list."""
    found = Manifests()
    first = _load(folder / manifest_name(0), found)
    if first is None:
        return found
    found.step = first["step"]
    for rank in range(first["world_size"]):
        found.names.add(manifest_name(rank))
        manifest = first if rank == 0 else _load(folder / manifest_name(rank), found)
        if manifest is None:
            continue
        if manifest["step"] != found.step:
            found.problems.append(f"{manifest_name(rank)}: step {manifest['step']}, rank 0's says {found.step}")
        for name, digest in manifest["files"].items():
            if found.digests.setdefault(name, digest) != digest:
                found.problems.append(f"{name}: two manifests list it with different digests")
    return found


def _load(path: Path, found: Manifests) -> Optional[dict]:
    """One manifest, or None with the reason added to ``found.problems``."""
    if not path.is_file() or path.is_symlink():
        found.problems.append(f"{path.name}: missing (every checkpoint is saved with one manifest per rank)")
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        manifest = None
    if (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) and "step" in manifest
            and isinstance(manifest.get("world_size"), int) and 1 <= manifest["world_size"] <= MAX_RANKS):
        return manifest
    found.problems.append(f"{path.name}: not a readable manifest")
    return None


def checkpoint_problems(folder: Path, share: int = 0, shares: int = 1) -> tuple[Optional[int], list[str]]:
    """The step the manifests claim and every way ``folder`` differs from them. Share 0 of
    ``shares`` also reports what is wrong with the manifests and the listing; each share
    hashes every ``shares``-th listed file, so ranks can split the reading."""
    manifests = read_manifests(folder)
    if not manifests.names:  # no usable rank 0 manifest: nothing to compare the files with
        return manifests.step, manifests.problems if share == 0 else []
    files, others = stored_files(folder)
    problems = _listing_problems(manifests, files, others) if share == 0 else []
    listed = sorted(manifests.digests.keys() & set(files))
    problems += [f"{name}: changed since it was saved (its SHA-256 differs from the manifest's)"
                 for name in listed[share::shares] if sha256(folder / name) != manifests.digests[name]]
    return manifests.step, problems


def _listing_problems(manifests: Manifests, files: list[str], others: list[str]) -> list[str]:
    """The manifests' own faults, then each file missing, unlisted, or not a regular file."""
    known = manifests.digests.keys() | manifests.names
    return (manifests.problems
            + [f"{name}: not a regular file (a link, a pipe or a device)" for name in others]
            + [f"{name}: missing" for name in sorted(manifests.digests.keys() - set(files) - set(others))]
            + [f"{name}: in no manifest" for name in files if name not in known])


def refusal(folder: Path, step: Optional[int], problems: list[str]) -> CheckpointRefused:
    """The error that names the checkpoint, its step and the first files at fault."""
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    at = f"step {step}" if step is not None else "step unknown"
    return CheckpointRefused(
        f"refusing to resume from the checkpoint {folder} ({at}): {shown}{more}. Nothing was loaded; "
        "find out who wrote the run folder, or start a new --run (one from an export of this run via --init)")


def verify_checkpoint(folder: Path) -> None:
    """Check every file of ``folder`` in this process; ``CheckpointRefused`` names the faults."""
    step, problems = checkpoint_problems(folder)
    if problems:
        raise refusal(folder, step, problems)
