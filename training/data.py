"""Training data from the curated Lance tables: a deterministic draw plan, then Ray Data
workers that fetch each clip's blob, decode the drawn frames with decord and crop them with
``pipeline.frames.crop_resize`` (the resize inference applies to its input image).

The plan is a list of micro-batches. Each draws its shape first, (frames, fps) at the
paper's 1:1:1:5 and 1:2:4:1 among the pairs some kept row can supply, then its rows by
their balancing ``weight`` among the rows that can supply that shape (frames = 1 also
draws from ``images.lance``). Micro-batch ``k`` depends only on the seed and ``k``, so a run
that resumes at step ``s`` continues with exactly the micro-batches it would have had.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa

from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config
from pipeline.frames import crop_resize
from pipeline.tables import CLIPS, IMAGES, VAL_ROWS, encoded_table, open_curated

log = logging.getLogger("training.data")

if TYPE_CHECKING:
    from training.encodings import Encodings

CLIP_COLUMNS = ["clip_id", "caption", "fps", "num_frames", "width", "video_width", "crop_base", "crop_refiner", "frame_fps", "weight"]
IMAGE_COLUMNS = ["image_id", "caption", "width", "crop_base", "crop_refiner", "weight"]


@dataclass
class Catalog:
    """The kept rows training may draw, with what each can supply (small columns only)."""

    clips: pa.Table  # CLIP_COLUMNS + _rowid
    images: Optional[pa.Table]  # IMAGE_COLUMNS + _rowid, or None
    data_dir: str
    # Set by attach_encodings when every row has the stage's stored encoder outputs.
    encoded: Optional["Encodings"] = None

    def __post_init__(self) -> None:
        """Index clip rows by the (frames, fps) pairs they can supply, once."""
        self._by_shape: dict[tuple[int, int], list[tuple[str, int, float]]] = {}
        weights = self.clips.column("weight").to_pylist()
        for i, pairs in enumerate(self.clips.column("frame_fps").to_pylist()):
            for pair in pairs:
                self._by_shape.setdefault((pair["frames"], pair["fps"]), []).append(("clips", i, weights[i]))

    def candidates(self, frames: int, fps: int) -> list[tuple[str, int, float]]:
        """(table, row position, weight) of every row that can supply the shape."""
        out = list(self._by_shape.get((frames, fps), []))
        if frames == 1 and self.images is not None:
            out += [("images", i, w) for i, w in enumerate(self.images.column("weight").to_pylist())]
        return out


def load_catalog(
    data_dir: str | Path, where: Optional[str] = None, val_where: Optional[str] = None, include_val: bool = False
) -> Catalog:
    """Read the kept rows matching ``where``, less the validation rows: those matching
    ``val_where`` (``train.val_where``), else ``VAL_ROWS`` where the table has curation's
    split column, else none. ``include_val`` keeps them (``i2vgen encode`` stores encodings
    for every row, so the validation loss can read them too). A row where ``val_where`` is
    NULL is a training row. Every problem is a ConfigError before any worker starts."""
    data = Path(data_dir)
    if not (data / CLIPS).exists():
        raise ConfigError(f"--data: {data / CLIPS} does not exist; run `i2vgen curate ... --out {data}` first")
    tables, held_out = {}, {}
    kept = "keep = true" + (f" AND ({where})" if where else "")
    for name, columns in ((CLIPS, CLIP_COLUMNS), (IMAGES, IMAGE_COLUMNS)):
        if not (data / name).exists():
            continue
        ds = open_curated(data / name)
        missing = [c for c in columns + ["keep"] if c not in ds.schema.names]
        if missing:
            raise ConfigError(f"--data: {name} has no column {missing[0]!r} (was it written by this version's curation?)")
        for key, sql in (("train.where", where), ("train.val_where", val_where)):
            _check_filter(ds, name, key, sql)
        held_out[name] = None if include_val else val_where or (VAL_ROWS if "split" in ds.schema.names else None)
        condition = kept + (f" AND ({held_out[name]}) IS NOT TRUE" if held_out[name] else "")
        tables[name] = ds.to_table(columns=columns, filter=condition, with_row_id=True)
    if tables[CLIPS].num_rows == 0:
        message = f"--data: {data / CLIPS} has no kept rows" + (f" matching {where!r}" if where else "")
        validation = open_curated(data / CLIPS).count_rows(filter=kept) if held_out[CLIPS] else 0
        if validation:
            message += (f" outside the validation rows: all {validation} match {held_out[CLIPS]!r}; "
                        "lower curation.val_fraction or set train.val_where")
        raise ConfigError(message)
    return Catalog(tables[CLIPS], tables.get(IMAGES), str(data))


def _check_filter(ds: Any, name: str, key: str, sql: Optional[str]) -> None:
    """A filter that does not parse, names a missing column or compares across types fails
    naming its key (planning the scan checks it against the schema without reading rows)."""
    if sql:
        try:
            ds.scanner(filter=sql, columns=[], with_row_id=True).explain_plan()
        except (ValueError, OSError) as err:
            raise ConfigError(f"{key}: cannot apply {sql!r} to {name}: {err}") from err


def _choice(rng: np.random.Generator, values: list, weights: list[float]) -> Any:
    p = np.asarray(weights, dtype=np.float64)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def plan_micro_batch(catalog: Catalog, config: Config, index: int) -> dict[str, Any]:
    """Micro-batch ``index`` of the run: its shape and the rows (plus spares) to load."""
    train = config.train
    drawn = index % train.overfit_batches if train.overfit_batches > 0 else index
    rng = np.random.default_rng([train.seed, drawn])
    shapes = [(f, fps) for f in train.frame_counts for fps in train.fps_values]
    weights = [fw * pw for fw in train.frame_weights for pw in train.fps_weights]
    available = [(s, w) for s, w in zip(shapes, weights) if catalog.candidates(*s)]
    if not available:
        raise ConfigError("train.frame_counts: no kept row can supply any configured (frames, fps) pair")
    frames, fps = _choice(rng, [s for s, _ in available], [w for _, w in available])
    candidates = catalog.candidates(frames, fps)
    draws = train.micro_batch + train.spare_samples
    picks = rng.choice(len(candidates), size=draws, p=_normalised([c[2] for c in candidates]))
    return {
        "index": index,
        "frames": frames,
        "fps": fps,
        "tables": [candidates[i][0] for i in picks],
        "rows": [int(candidates[i][1]) for i in picks],
        "seed": int(rng.integers(2**31)),
    }


def _normalised(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(w > 0, w, 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


def validate_shapes(catalog: Catalog, config: Config, stage: str) -> None:
    """Frame counts the stage cannot hold fail before any worker starts."""
    stage_cfg = getattr(config.stages, stage)
    too_long = [f for f in config.train.frame_counts if f > 32]
    if too_long:
        raise ConfigError(f"train.frame_counts: {too_long[0]} frames exceeds the 32 the curated buckets describe")
    if stage_cfg.width % config.vae.factor or stage_cfg.height % config.vae.factor:
        raise ConfigError(f"stages.{stage}: size must be a multiple of the VAE factor")
    plan_micro_batch(catalog, config, 0)


class UndecodableMedia(Exception):
    """A row's stored bytes are not media the decoder can read: bad data, not a fault."""


def media_errors() -> tuple[type[BaseException], ...]:
    """What damaged media raises: ``UndecodableMedia`` on opening it, decord's error while
    decoding a clip's frames. Reading the blob (I/O) raises neither."""
    import decord

    return (UndecodableMedia, decord.DECORDError)


class MediaSource:
    """One process's handles on the curated media: a row's blob as decoded frames."""

    def __init__(self, data_dir: str, images: bool) -> None:
        # The version the catalog was read from: row ids are addresses within a version.
        self.datasets = {"clips": open_curated(Path(data_dir) / CLIPS)}
        if images:
            self.datasets["images"] = open_curated(Path(data_dir) / IMAGES)

    def blob(self, table: str, column: str, row_id: int) -> bytes:
        """The stored bytes of one row's media (I/O: its errors are not bad media)."""
        with self.datasets[table].take_blobs(column, ids=[row_id])[0] as f:
            return f.read()

    def video(self, row_id: int):
        """The clip's stored mp4 as a decord reader (frames are decoded on request)."""
        import decord

        data = self.blob("clips", "video", row_id)
        try:
            return decord.VideoReader(io.BytesIO(data), num_threads=1)
        except (decord.DECORDError, RuntimeError) as err:  # bytes it cannot open: "Error reading ..."
            raise UndecodableMedia(f"clips row {row_id}: {err}") from err

    def image(self, row_id: int) -> np.ndarray:
        """The image as one RGB frame ``(1, H, W, 3)``."""
        from PIL import Image

        data = self.blob("images", "image", row_id)
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
        except OSError as err:  # PIL's UnidentifiedImageError, a truncated file
            raise UndecodableMedia(f"images row {row_id}: {err}") from err


def window(length: int, frames: int, step: float, rng: np.random.Generator) -> list[int]:
    """``frames`` indices ``step`` apart from a random start, clamped to ``length`` frames."""
    span = int(np.floor((frames - 1) * step)) + 1
    start = int(rng.integers(0, max(1, length - span + 1)))
    return [min(length - 1, start + int(round(k * step))) for k in range(frames)]


def stage_crop(meta: dict[str, Any], stage: str, table: str) -> tuple[list[int], float]:
    """The row's crop for the stage and the scale from source pixels to the stored media."""
    crop = meta["crop_base"] if stage == "base" else meta["crop_refiner"]
    return crop, 1.0 if table == "images" else meta["video_width"] / meta["width"]


class MicroBatchLoader:
    """Ray Data actor: plan rows in, same-shape micro-batches out.

    A micro-batch is decoded frames (``video``), or with stored encodings the latents and
    features the trainer would have computed (``latents``, ``image_embeds``, ``text``).
    Each actor opens the Lance tables once. A sample whose media fails to decode
    (``media_errors``) is logged, replaced by the next spare and counted in
    ``corrupt``; a micro-batch whose spares run out is emitted empty and skipped by the
    trainer (also counted). Any other error is not bad media but a fault of the code or the
    tables, and fails the micro-batch loudly.
    """

    def __init__(self, catalog: Catalog, config: Config, stage: str) -> None:
        import lance

        self.catalog = catalog
        self.config = config
        self.stage = stage
        self.size = (getattr(config.stages, stage).width, getattr(config.stages, stage).height)
        self.media = MediaSource(catalog.data_dir, catalog.images is not None)
        self.encoded = None
        if catalog.encoded is not None:
            self.encoded = lance.dataset(str(Path(catalog.data_dir) / encoded_table(stage)))

    def __call__(self, plan: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"index": [], "fps": [], "caption": [], "corrupt": []}
        tensors: dict[str, list] = {}
        for i in range(len(plan["index"])):
            row = {k: v[i] for k, v in plan.items()}
            samples, corrupt = self._load(row)
            out["index"].append(int(row["index"]))
            out["corrupt"].append(corrupt)
            out["fps"].append(int(row["fps"]))
            out["caption"].append("\x1f".join(s["caption"] for s in samples))
            for name in self._tensor_names():
                empty = np.zeros((0,), np.float32)
                tensors.setdefault(name, []).append(np.stack([s[name] for s in samples]) if samples else empty)
        batch = {k: np.array(v) for k, v in out.items()}
        for name, values in tensors.items():  # one array per micro-batch, shapes differ
            batch[name] = np.empty(len(values), dtype=object)
            for j, value in enumerate(values):
                batch[name][j] = value
        return batch

    def _tensor_names(self) -> list[str]:
        return ["video"] if self.catalog.encoded is None else list(self.catalog.encoded.tensors)

    def _load(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        rng = np.random.default_rng(int(row["seed"]))
        samples, corrupt = [], 0
        for table, position in zip(row["tables"], row["rows"]):
            if len(samples) == self.config.train.micro_batch:
                break
            try:
                load = self._stored if self.encoded is not None else self._decoded
                samples.append(load(str(table), int(position), int(row["frames"]), int(row["fps"]), rng))
            except media_errors() as err:
                log.warning("micro-batch %d: %s row %d does not decode, a spare stands in: %s: %s",
                            int(row["index"]), table, int(position), type(err).__name__, err)
                corrupt += 1
        if len(samples) < self.config.train.micro_batch:
            return [], corrupt
        return samples, corrupt

    def _meta(self, table: str, position: int) -> dict[str, Any]:
        return (self.catalog.clips if table == "clips" else self.catalog.images).slice(position, 1).to_pylist()[0]

    def _decoded(self, table: str, position: int, frames: int, fps: int, rng: np.random.Generator) -> dict[str, Any]:
        meta = self._meta(table, position)
        if table == "images":
            clip = self.media.image(meta["_rowid"])
        else:
            reader = self.media.video(meta["_rowid"])
            clip = reader.get_batch(window(len(reader), frames, meta["fps"] / fps, rng)).asnumpy()
        crop, scale = stage_crop(meta, self.stage, table)
        return {"video": crop_resize(clip, crop, self.size, scale), "caption": meta["caption"] or ""}

    def _stored(self, table: str, position: int, frames: int, fps: int, rng: np.random.Generator) -> dict[str, Any]:
        """The same draw from the stored grid: latents ``(C, F, h, w)``, the first frame's
        image embedding, the caption's tokens."""
        from training.encodings import read_frames

        encodings = self.catalog.encoded
        picked = window(int(encodings.frames[table][position]), frames, encodings.grid_fps / fps, rng)
        with self.encoded.take_blobs("tensors", ids=[int(encodings.rows[table][position])])[0] as blob:
            stored = read_frames(blob, picked)
        sample = {"latents": stored["latents"].swapaxes(0, 1).astype(np.float32), "caption": ""}
        if "image_embeds" in stored:
            sample["image_embeds"] = stored["image_embeds"][0].astype(np.float32)
        if "text" in stored:
            sample["text"] = stored["text"][0].astype(np.float32)
        return sample


def plan_dataset(catalog: Catalog, config: Config, stage: str, start_step: int, rank: int):
    """The Ray Dataset of rank ``rank``'s decoded micro-batches from ``start_step`` on.

    Micro-batch ``k`` goes to rank ``k % workers``: each rank has its own dataset rather than
    a streaming split of one, so which rank trains which micro-batch does not depend on
    timing, and a run restarted from a checkpoint continues exactly as an unbroken one."""
    import ray

    world = config.train.workers
    plans = [plan_micro_batch(catalog, config, i)
             for i in range(start_step * world + rank, config.train.max_steps * world, world)]
    ds = ray.data.from_items(plans, override_num_blocks=max(1, min(len(plans), 64)))
    return ds.map_batches(
        MicroBatchLoader,
        fn_constructor_args=(catalog, config, stage),
        batch_size=1,
        concurrency=1,
        num_cpus=config.train.loader_cpus,
    )


def rank_dataset_name(rank: int) -> str:
    return f"train_{rank}"
