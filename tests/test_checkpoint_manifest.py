"""The checkpoint manifests (``training.manifest``) on folders laid out as Ray merges a
2-rank checkpoint: each rank's folder with its own manifest, copied into one. Every way
the merged folder can differ from what the ranks saved must refuse it, naming the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from training.manifest import CheckpointRefused, checkpoint_problems, sha256, verify_checkpoint, write_manifest

STEP = 4
RANK_FILES = {
    0: {"latest": b"state", "metrics.json": b'{"step": 4}', "ema.safetensors": b"e" * 300,
        "state/mp_rank_00_model_states.pt": b"m" * 500, "state/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"a" * 700},
    1: {"state/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"b" * 700, "rng_rank1.pt": b"r" * 50},
}


def saved_checkpoint(root: Path) -> Path:
    """Each rank writes its files and its manifest in its own folder; the merge is Ray's."""
    merged = root / "checkpoint"
    for rank, files in RANK_FILES.items():
        folder = root / f"rank{rank}"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        write_manifest(folder, rank, len(RANK_FILES), STEP)
        shutil.copytree(folder, merged, dirs_exist_ok=True)
    return merged


def flip_a_byte(folder: Path) -> str:
    path = folder / "state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "state/zero_pp_rank_1_mp_rank_00_optim_states.pt: changed"


def remove_a_file(folder: Path) -> str:
    (folder / "rng_rank1.pt").unlink()
    return "rng_rank1.pt: missing"


def plant_a_file(folder: Path) -> str:
    (folder / "state" / "extra.pt").write_bytes(b"planted")
    return "state/extra.pt: in no manifest"


def remove_a_manifest(folder: Path) -> str:
    (folder / "manifest_rank1.json").unlink()
    return "manifest_rank1.json: missing"


def remove_every_manifest(folder: Path) -> str:
    for path in folder.glob("manifest_rank*.json"):
        path.unlink()
    return "manifest_rank0.json: missing"


def link_a_file(folder: Path) -> str:
    target = folder.parent / "outside.pt"
    (folder / "ema.safetensors").rename(target)
    os.symlink(target, folder / "ema.safetensors")
    return "ema.safetensors: not a regular file"


def rewrite_a_listed_digest(folder: Path) -> str:
    manifest = json.loads((folder / "manifest_rank0.json").read_text())
    manifest["files"]["latest"] = sha256(folder / "metrics.json")
    (folder / "manifest_rank0.json").write_text(json.dumps(manifest))
    return "latest: changed"


def test_a_checkpoint_as_saved_passes(tmp_path) -> None:
    folder = saved_checkpoint(tmp_path)
    assert checkpoint_problems(folder) == (STEP, [])
    verify_checkpoint(folder)


@pytest.mark.parametrize("tamper", [flip_a_byte, remove_a_file, plant_a_file, remove_a_manifest, link_a_file,
                                    rewrite_a_listed_digest], ids=lambda f: f.__name__)
def test_a_tampered_checkpoint_is_refused_naming_the_file_and_step(tmp_path, tamper: Callable[[Path], str]) -> None:
    folder = saved_checkpoint(tmp_path)
    expected = tamper(folder)
    with pytest.raises(CheckpointRefused, match=f"step {STEP}") as refused:
        verify_checkpoint(folder)
    assert expected in str(refused.value)


def test_a_checkpoint_without_manifests_is_refused(tmp_path) -> None:
    folder = saved_checkpoint(tmp_path)
    expected = remove_every_manifest(folder)
    with pytest.raises(CheckpointRefused, match="step unknown") as refused:
        verify_checkpoint(folder)
    assert expected in str(refused.value) and "Nothing was loaded" in str(refused.value)


def test_ranks_split_the_hashing_and_together_find_every_change(tmp_path) -> None:
    folder = saved_checkpoint(tmp_path)
    for name in ("latest", "rng_rank1.pt", "state/mp_rank_00_model_states.pt"):
        (folder / name).write_bytes(b"changed")
    found = [problem.split(":")[0] for share in range(3) for problem in checkpoint_problems(folder, share, 3)[1]]
    assert sorted(found) == ["latest", "rng_rank1.pt", "state/mp_rank_00_model_states.pt"]  # each once
