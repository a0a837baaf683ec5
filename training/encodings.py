"""Stored encoder outputs (``i2vgen encode``): what they must match and how training finds them.

The frozen VAE and CLIP give the same outputs for the same pixels every step, so they can
run once per row instead of once per draw. Stored outputs are only valid for the encoders
and crop that made them: each ``encoded_<stage>.lance`` carries a fingerprint of those
settings in its schema metadata, and training uses the table only when the fingerprint is
its own and every row it may draw is covered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from pipeline.config.loader import ConfigError
from pipeline.config.marks import defining_keys
from pipeline.config.schema import Config
from pipeline.tables import encoded_table

if TYPE_CHECKING:
    from pipeline.models.conditioning import Conditioning

FINGERPRINT_KEY = b"i2vgen.encoding"


def stage_conditioning(config: Config, stage: str) -> "Conditioning":
    """What the stage's denoiser reads, and so what encoding it stores (the model is built on
    the meta device: nothing is allocated)."""
    from pipeline.models.build import build_denoiser

    return build_denoiser(config, stage, device="meta").conditioning


def _weights_identity(path: Optional[str]) -> Optional[dict[str, Any]]:
    """A weights path and its size: new weights under the same name still differ."""
    if path is None:
        return None
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.exists() else []
    return {"path": str(path), "bytes": sum(f.stat().st_size for f in files)}


def fingerprint(config: Config, stage: str) -> dict[str, Any]:
    """Every setting that changes the stored tensors of ``stage``: the keys the schema marks
    as encoding-defining (a weights path as its identity) and the CLIP features the stage
    reads. Shaped as the first tables' fingerprints were, so that theirs still compare equal:
    the stage's and the encode section's keys by their own names (``width``, ``dtype``), the
    others under their section (``vae.kind``)."""
    conditioning = stage_conditioning(config, stage)
    out: dict[str, Any] = {"stage": stage, "image_embeds": conditioning.image_features,
                           "text": conditioning.text_features}
    for key, value in defining_keys(config, "encoding", stage).items():
        for own in (f"stages.{stage}.", "encode."):
            key = key.removeprefix(own)
        section, _, name = key.rpartition(".")
        if name == "weights":
            value = _weights_identity(value)
        (out.setdefault(section, {}) if section else out)[name] = value
    return out


def stored_fingerprint(uri: Path) -> Optional[dict[str, Any]]:
    import lance

    metadata = lance.dataset(str(uri)).schema.metadata or {}
    return json.loads(metadata[FINGERPRINT_KEY]) if FINGERPRINT_KEY in metadata else None


def first_difference(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> Optional[str]:
    """The first setting that differs, as ``key: stored -> wanted``."""
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: encoded with {a!r}, this config has {b!r}"
    return None


# Tensors stored per grid frame: a sample reads only the frames it draws.
PER_FRAME = ("latents", "image_embeds")
NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32}


def read_frames(blob, frames: list[int]) -> dict[str, np.ndarray]:
    """One encoded row's tensors from its Lance blob, reading the bytes of only the grid
    ``frames`` of the per-frame ones (safetensors lays each tensor out row after row), so a
    window of 8 frames does not fetch a clip's whole grid."""
    size = int.from_bytes(blob.read_range(0, 8), "little")
    header = json.loads(blob.read_range(8, size))
    header.pop("__metadata__", None)
    names, ranges, shapes = [], [], []
    for name, info in header.items():
        dtype, shape = np.dtype(NUMPY_DTYPES[info["dtype"]]), info["shape"]
        row = int(np.prod(shape[1:])) * dtype.itemsize
        start = 8 + size + info["data_offsets"][0]
        for j in frames if name in PER_FRAME else range(shape[0]):
            ranges.append((start + j * row, row))
        names.append((name, dtype, len(ranges)))
        shapes.append(shape[1:])
    chunks = blob.read_ranges(ranges)
    out, first = {}, 0
    for (name, dtype, last), shape in zip(names, shapes):
        out[name] = np.stack([np.frombuffer(c, dtype).reshape(shape) for c in chunks[first:last]])
        first = last
    return out


@dataclass
class Encodings:
    """Where each catalog row's stored tensors are: Lance row ids of ``encoded_<stage>``."""

    rows: dict[str, np.ndarray]  # "clips" / "images" -> encoded row id per catalog position
    frames: dict[str, np.ndarray]  # and its grid length (0: the media could not be decoded)
    grid_fps: int
    tensors: tuple[str, ...]  # what each sample carries: latents (+ image_embeds, text)
    null_text: Optional[np.ndarray]  # the empty prompt's tokens (1, L, D), for text dropout

    def for_trainers(self) -> "Encodings":
        """What a trainer needs: the tensors it reads and the empty prompt. The per-row
        index (O(rows)) stays with the loaders."""
        return replace(self, rows={}, frames={})


def attach_encodings(catalog, config: Config, stage: str) -> str:
    """Point the catalog at the stage's stored encodings when they fit, and say what training
    will do. ``train.encoded: require`` turns every reason not to into a ConfigError."""
    mode = config.train.encoded
    if mode == "never":
        return "encoders run on the trainers (train.encoded=never)"
    reason, encodings = _usable(catalog, config, stage)
    if encodings is None:
        if mode == "require":
            raise ConfigError(f"train.encoded: require, but {reason}")
        return f"encoders run on the trainers: {reason}"
    catalog.encoded = encodings
    return f"pre-encoded: {encoded_table(stage)} covers every row, the trainers build no VAE or CLIP"


def _usable(catalog, config: Config, stage: str) -> tuple[str, Optional[Encodings]]:
    import lance

    uri = Path(catalog.data_dir) / encoded_table(stage)
    if not uri.exists():
        return f"{uri.name} does not exist (run `i2vgen encode {catalog.data_dir} --stage {stage}`)", None
    wanted = fingerprint(config, stage)
    difference = first_difference(stored_fingerprint(uri) or {}, wanted)
    if difference:
        return f"{uri.name} does not fit: {difference}", None
    table = lance.dataset(str(uri)).to_table(columns=["id", "table", "frames"], with_row_id=True)
    by_id = {(t, i): (r, n) for t, i, r, n in zip(
        *(table.column(c).to_pylist() for c in ("table", "id", "_rowid", "frames")))}
    rows, frames = {}, {}
    for name, key, part in (("clips", "clip_id", catalog.clips), ("images", "image_id", catalog.images)):
        if part is None:
            continue
        ids = part.column(key).to_pylist()
        missing = [i for i in ids if (name, i) not in by_id]
        if missing:
            return f"{uri.name} lacks {len(missing)} of {len(ids)} rows of {name} (first {missing[0]})", None
        rows[name] = np.array([by_id[(name, i)][0] for i in ids], dtype=np.uint64)
        frames[name] = np.array([by_id[(name, i)][1] for i in ids], dtype=np.int64)
    conditioning = stage_conditioning(config, stage)
    if conditioning.null_prompt and ("prompt", "") not in by_id:
        return f"{uri.name} lacks the empty prompt's tokens (run `i2vgen encode` again)", None
    null_text = _null_text(uri, by_id[("prompt", "")][0]) if conditioning.null_prompt else None
    return "", Encodings(rows, frames, config.encode.grid_fps, conditioning.stored, null_text)


def _null_text(uri: Path, row_id: int) -> np.ndarray:
    import lance
    from safetensors.numpy import load

    with lance.dataset(str(uri)).take_blobs("tensors", ids=[row_id])[0] as f:
        return load(f.read())["text"].astype(np.float32)
