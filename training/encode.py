"""``i2vgen encode DIR``: the frozen encoders run once over the curated tables (a Ray Data job).

For each stage, every kept clip is decoded on a grid of ``encode.grid_fps`` frames per
second, cropped with the stage's crop and resized exactly as the training loader does, and
encoded: VAE latents (posterior mean, as training takes it) of every grid frame, the CLIP
image embedding of every grid frame (a window may start on any of them, and the base
conditions on its first frame), and the caption's tokens where the stage reads text.
Images are one-frame clips. A draw of (frames, fps) is then a strided slice of the grid.

Encoder actors (``encode.actors``, each with ``encode.gpus_per_actor``) hold the VAE and
CLIP once for the whole job; the driver appends their rows to ``encoded_<stage>.lance``
every ``encode.chunk_rows`` rows, so a killed job keeps what it committed and a re-run
encodes only what is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.frames import crop_resize
from pipeline.tables import ENCODED_SCHEMA, encoded_table
from pipeline.curated_media import MediaSource, media_errors, stage_crop
from training.data import load_catalog
from training.encodings import FINGERPRINT_KEY, first_difference, fingerprint, stage_conditioning, stored_fingerprint

# The per-row facts an encoder actor needs, read by the driver with the catalog.
ROW_COLUMNS = ["table", "id", "row_id", "fps", "width", "video_width", "crop_base", "crop_refiner", "caption"]
# A row whose encoding fails for a passing reason (out of memory, an I/O error reading its
# blob) is tried this many times in all, waiting RETRY_WAIT_S, then doubling, between tries.
ATTEMPTS = 3
RETRY_WAIT_S = 2.0

log = logging.getLogger("training.encode")


def transient_errors() -> tuple[type[BaseException], ...]:
    """Failures that say nothing about the row: memory (the GPU's or the host's) and I/O."""
    return (torch.cuda.OutOfMemoryError, MemoryError, OSError)


def grid_indices(stored_frames: int, fps: float, grid_fps: int) -> list[int]:
    """Stored-video frames nearest to ``0, 1/grid_fps, 2/grid_fps, ...`` seconds."""
    count = int(np.floor((stored_frames - 1) * grid_fps / fps)) + 1
    return [min(stored_frames - 1, int(round(j * fps / grid_fps))) for j in range(count)]


class StageEncoder:
    """Ray Data actor: rows of the catalog in, ``ENCODED_SCHEMA`` rows out.

    A row whose media cannot be decoded is written with ``frames = 0`` and no tensors, so
    it is not retried on every run and training counts it as a corrupt sample. A transient
    failure is retried (``ATTEMPTS``) and never written: if it persists the job fails, and
    a re-run encodes the rows it had not committed. Any other error is a fault and fails
    the job at once.
    """

    def __init__(self, data_dir: str, config: Config, stage: str, has_images: bool) -> None:
        from pipeline.models.build import build_autoencoder, build_clip

        self.device = "cuda" if config.encode.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.config = config
        self.stage = stage
        self.size = (getattr(config.stages, stage).width, getattr(config.stages, stage).height)
        self.conditioning = stage_conditioning(config, stage)
        self.media = MediaSource(data_dir, has_images)
        self.vae = build_autoencoder(config.vae, device=self.device)
        self.clip = build_clip(config.clip, device=self.device)
        self.dtype = getattr(torch, config.encode.dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            try:
                tensors = self._encode_with_retries(row)
            except media_errors() as err:
                log.warning("%s row %s does not decode, recorded as undecodable: %s: %s",
                            row["table"], row["id"], type(err).__name__, err)
                out.append({"id": row["id"], "table": row["table"], "frames": 0, "tensors": b""})
                continue
            frames = int(tensors["latents"].shape[0]) if "latents" in tensors else 1
            out.append({"id": row["id"], "table": row["table"], "frames": frames, "tensors": _pack(tensors)})
        return pa.Table.from_pylist(out, schema=ENCODED_SCHEMA)

    def _encode_with_retries(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        wait = RETRY_WAIT_S
        for attempt in range(1, ATTEMPTS):
            try:
                return self._encode(row)
            except transient_errors() as err:
                log.warning("%s row %s, attempt %d of %d: %s: %s; retrying in %.0f s", row["table"], row["id"],
                            attempt, ATTEMPTS, type(err).__name__, err, wait)
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                time.sleep(wait)
                wait *= 2
        return self._encode(row)  # the last try: a failure now fails the job, and nothing is written

    @torch.no_grad()
    def _encode(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        if row["table"] == "prompt":
            return {k: v.to(self.dtype).cpu() for k, v in self.conditioning.caption_features(self.clip, row["caption"]).items()}
        crop, scale = stage_crop(row, self.stage, row["table"])
        if row["table"] == "images":
            chunks = [self.media.image(row["row_id"])]
        else:
            reader = self.media.video(row["row_id"])
            picked = grid_indices(len(reader), row["fps"], self.config.encode.grid_fps)
            step = self.config.encode.batch_frames
            chunks = (reader.get_batch(picked[i : i + step]).asnumpy() for i in range(0, len(picked), step))
        latents, per_frame = [], []
        for frames in chunks:
            rgb = torch.from_numpy(crop_resize(frames, crop, self.size, scale)).to(self.device)
            pixels = rgb.permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W), as the trainer scales
            latents.append(self.vae.encode(pixels))
            per_frame.append(self.conditioning.frame_features(self.clip, pixels))
        tensors = {"latents": torch.cat(latents)}
        tensors |= {name: torch.cat([f[name] for f in per_frame]) for name in per_frame[0]}
        tensors |= self.conditioning.caption_features(self.clip, row["caption"] or "")
        return {k: v.to(self.dtype).cpu().contiguous() for k, v in tensors.items()}


def _pack(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _rows_to_encode(data_dir: Path, config: Config, stage: str, done: set[tuple[str, str]]) -> pa.Table:
    """Every kept row, validation rows too (and the empty prompt, where the stage reads
    text), not yet encoded."""
    catalog = load_catalog(data_dir, include_val=True)
    rows = []
    for name, key, part in (("clips", "clip_id", catalog.clips), ("images", "image_id", catalog.images)):
        if part is None:
            continue
        for meta in part.to_pylist():
            if (name, meta[key]) not in done:
                rows.append({
                    "table": name, "id": meta[key], "row_id": meta["_rowid"], "fps": meta.get("fps", 0.0),
                    "width": meta["width"], "video_width": meta.get("video_width", meta["width"]),
                    "crop_base": meta["crop_base"], "crop_refiner": meta["crop_refiner"], "caption": meta["caption"],
                })
    if stage_conditioning(config, stage).null_prompt and ("prompt", "") not in done:
        rows.append({"table": "prompt", "id": "", "row_id": 0, "fps": 0.0, "width": 1, "video_width": 1,
                     "crop_base": [0, 0, 1, 1], "crop_refiner": [0, 0, 1, 1], "caption": ""})
    return pa.Table.from_pylist(rows)


def _done(uri: Path) -> set[tuple[str, str]]:
    import lance

    table = lance.dataset(str(uri)).to_table(columns=["table", "id"])
    return set(zip(table.column("table").to_pylist(), table.column("id").to_pylist()))


def _committed(uri: Path) -> bool:
    return (uri / "_versions").is_dir() and any((uri / "_versions").iterdir())


def encode_stage(data_dir: str | Path, config: Config, stage: str, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Encode every kept row of the curated tables for ``stage`` that is not encoded yet."""
    import ray
    from tqdm import tqdm

    from pipeline.compaction import compact
    from pipeline.ray_runtime import init_ray

    data = Path(data_dir)
    uri = data / encoded_table(stage)
    wanted = fingerprint(config, stage)
    if uri.exists() and not _committed(uri):
        shutil.rmtree(uri)  # killed during its very first commit: holds nothing
    if uri.exists():
        difference = first_difference(stored_fingerprint(uri) or {}, wanted)
        if difference and not overwrite:
            raise ConfigError(f"{uri.name}: {difference}; pass --overwrite to encode it again")
        if difference:
            shutil.rmtree(uri)
    done = _done(uri) if uri.exists() else set()
    todo = _rows_to_encode(data, config, stage, done)
    summary = {"stage": stage, "table": str(uri), "already": len(done), "encoded": 0, "undecodable": 0}
    if todo.num_rows == 0:
        return summary
    init_ray()
    schema = ENCODED_SCHEMA.with_metadata({FINGERPRINT_KEY: json.dumps(wanted)})
    has_images = (data / "images.lance").exists()
    # Small blocks keep the actors evenly busy and the commits frequent; capped for huge tables.
    encoded = ray.data.from_arrow(todo).repartition(max(1, min(todo.num_rows, 4096))).map_batches(
        StageEncoder,
        fn_constructor_args=(str(data), config, stage, has_images),
        batch_size=1,
        batch_format="pyarrow",
        concurrency=config.encode.actors,
        num_gpus=config.encode.gpus_per_actor,
    )
    bar = tqdm(total=todo.num_rows, desc=f"encode {stage}", unit="row", disable=not progress)
    pending: list[pa.Table] = []
    for batch in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(batch)
        bar.update(batch.num_rows)
        if sum(t.num_rows for t in pending) >= config.encode.chunk_rows:
            _append(uri, pending, schema, summary)
            pending = []
    if pending:
        _append(uri, pending, schema, summary)
    bar.close()
    compact(uri)
    return summary


def _append(uri: Path, batches: list[pa.Table], schema: pa.Schema, summary: dict[str, Any]) -> None:
    import lance

    table = pa.concat_tables(batches).cast(schema)
    lance.write_dataset(table, str(uri), schema=schema, mode="append" if _committed(uri) else "create")
    frames = table.column("frames").to_pylist()
    summary["encoded"] += sum(1 for f in frames if f > 0)
    summary["undecodable"] += sum(1 for f in frames if f == 0)


def encode(data_dir: str | Path, config: Config, stages: list[str], overwrite: bool = False,
           progress: bool = True) -> list[dict[str, Any]]:
    return [encode_stage(data_dir, config, stage, overwrite, progress) for stage in stages]


def check_stages(stages: Optional[list[str]]) -> list[str]:
    stages = stages or ["base", "refiner"]
    bad = [s for s in stages if s not in ("base", "refiner")]
    if bad:
        raise ConfigError(f"--stage: must be base or refiner, got {bad[0]!r}")
    return stages
