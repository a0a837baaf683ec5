"""Training data from the curated Lance tables: a deterministic draw plan, then Ray Data
workers that fetch each clip's blob, decode the drawn frames with decord and crop them with
``pipeline.frames.crop_resize`` (the resize inference applies to its input image).

Micro-batch ``k`` draws its shape first, (frames, fps) at the paper's 1:1:1:5 and 1:2:4:1
among the pairs some kept row can supply, then its rows by their balancing ``weight`` among
the rows that can supply that shape (frames = 1 also draws from ``images.lance``); its size
follows the frame count (``micro_batch_sizes``). It depends only on the seed and ``k``, so
each loader draws its own rank's micro-batches (``Planner``) and a run that resumes at step
``s`` continues with exactly the micro-batches it would have had.

The driver never holds the rows: it checks the tables with a streaming scan
(``summarize_catalog``), and one Ray task reads the catalog into the object store
(``put_catalog``), where every loader maps the same copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config.loader import ConfigError
from pipeline.config.schema import Config, TrainConfig
from pipeline.curated_media import MediaSource, media_errors, stage_crop
from pipeline.frames import crop_resize
from pipeline.tables import CLIPS, IMAGES, VAL_ROWS, encoded_table, open_curated

log = logging.getLogger("training.data")

if TYPE_CHECKING:
    from ray import ObjectRef

    from training.encodings import Encodings

CLIP_COLUMNS = ["clip_id", "caption", "fps", "num_frames", "width", "video_width", "crop_base", "crop_refiner", "frame_fps", "weight"]
IMAGE_COLUMNS = ["image_id", "caption", "width", "crop_base", "crop_refiner", "weight"]
# The longest clip the curated buckets describe.
MAX_FRAMES = 32


@dataclass
class Catalog:
    """The kept rows training may draw, with what each can supply (small columns only)."""

    clips: pa.Table  # CLIP_COLUMNS + _rowid
    images: Optional[pa.Table]  # IMAGE_COLUMNS + _rowid, or None
    data_dir: str
    # Set by attach_encodings when every row has the stage's stored encoder outputs.
    encoded: Optional["Encodings"] = None


@dataclass
class CatalogSummary:
    """What the driver knows of the catalog: row counts and the (frames, fps) pairs."""

    clips: int
    images: int
    shapes: dict[tuple[int, int], int] = field(default_factory=dict)  # (frames, fps) -> clips supplying it

    def rows_for(self, frames: int, fps: int) -> int:
        return self.shapes.get((frames, fps), 0) + (self.images if frames == 1 else 0)


class KeptTable(NamedTuple):
    """A curated table and its filters: ``kept`` (kept rows matching ``where``), ``draw``
    (those less the held-out rows: what training may draw) and ``held_out``."""

    ds: Any
    kept: str
    draw: str
    held_out: Optional[str]


def _kept_tables(
    data_dir: str | Path, where: Optional[str], val_where: Optional[str], include_val: bool
) -> dict[str, KeptTable]:
    """Each curated table with its filters. Every problem (a missing table or column, a
    filter that does not apply) is a ConfigError naming its key."""
    data = Path(data_dir)
    if not (data / CLIPS).exists():
        raise ConfigError(f"--data: {data / CLIPS} does not exist; run `i2vgen curate ... --out {data}` first")
    kept = "keep = true" + (f" AND ({where})" if where else "")
    out = {}
    for name, columns in ((CLIPS, CLIP_COLUMNS), (IMAGES, IMAGE_COLUMNS)):
        if not (data / name).exists():
            continue
        ds = open_curated(data / name)
        missing = [c for c in columns + ["keep"] if c not in ds.schema.names]
        if missing:
            raise ConfigError(f"--data: {name} has no column {missing[0]!r} (was it written by this version's curation?)")
        for key, sql in (("train.where", where), ("train.val_where", val_where)):
            _check_filter(ds, name, key, sql)
        held_out = None if include_val else val_where or (VAL_ROWS if "split" in ds.schema.names else None)
        out[name] = KeptTable(ds, kept, kept + (f" AND ({held_out}) IS NOT TRUE" if held_out else ""), held_out)
    return out


def _require_clips(count: int, data_dir: str | Path, where: Optional[str], clips: KeptTable) -> None:
    """No kept clip is a ConfigError that says which filter took them all."""
    if count:
        return
    message = f"--data: {Path(data_dir) / CLIPS} has no kept rows" + (f" matching {where!r}" if where else "")
    validation = clips.ds.count_rows(filter=clips.kept) if clips.held_out else 0
    if validation:
        message += (f" outside the validation rows: all {validation} match {clips.held_out!r}; "
                    "lower curation.val_fraction or set train.val_where")
    raise ConfigError(message)


def load_catalog(
    data_dir: str | Path, where: Optional[str] = None, val_where: Optional[str] = None, include_val: bool = False
) -> Catalog:
    """Read the kept rows matching ``where``, less the validation rows: those matching
    ``val_where`` (``train.val_where``), else ``VAL_ROWS`` where the table has curation's
    split column, else none. ``include_val`` keeps them (``i2vgen encode`` stores encodings
    for every row, so the validation loss can read them too). A row where ``val_where`` is
    NULL is a training row. Every problem is a ConfigError before any worker starts."""
    kept = _kept_tables(data_dir, where, val_where, include_val)
    tables = {name: table.ds.to_table(columns=CLIP_COLUMNS if name == CLIPS else IMAGE_COLUMNS, filter=table.draw,
                                      with_row_id=True)
              for name, table in kept.items()}
    _require_clips(tables[CLIPS].num_rows, data_dir, where, kept[CLIPS])
    return Catalog(tables[CLIPS], tables.get(IMAGES), str(data_dir))


def summarize_catalog(data_dir: str | Path, where: Optional[str] = None, val_where: Optional[str] = None) -> CatalogSummary:
    """The checks of ``load_catalog`` and the catalog's shape counts, from a scan of the
    ``frame_fps`` column batch by batch, so the driver never holds the rows (its RSS grew
    24 MB more at 10^6 rows than at 10^4: ``benchmarks/training.py --sections plans``)."""
    kept = _kept_tables(data_dir, where, val_where, include_val=False)
    clips, shapes = 0, {}
    for batch in kept[CLIPS].ds.to_batches(columns=["frame_fps"], filter=kept[CLIPS].draw):
        clips += batch.num_rows
        frames, fps, _ = _flat_pairs(batch.column(0))
        keys, counts = np.unique(frames << 32 | fps, return_counts=True)  # one int per pair: a flat sort
        for key, n in zip(keys.tolist(), counts.tolist()):
            pair = (key >> 32, key & 0xFFFFFFFF)
            shapes[pair] = shapes.get(pair, 0) + n
    _require_clips(clips, data_dir, where, kept[CLIPS])
    images = kept[IMAGES].ds.count_rows(filter=kept[IMAGES].draw) if IMAGES in kept else 0
    return CatalogSummary(clips, images, shapes)


def _flat_pairs(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``frame_fps`` column as three flat arrays: frames, fps and the row of each pair."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = pc.list_flatten(column)
    rows = pc.list_parent_indices(column).to_numpy()
    return (pc.struct_field(flat, "frames").to_numpy(zero_copy_only=False).astype(np.int64),
            pc.struct_field(flat, "fps").to_numpy(zero_copy_only=False).astype(np.int64), rows)


def _check_filter(ds: Any, name: str, key: str, sql: Optional[str]) -> None:
    """A filter that does not parse, names a missing column or compares across types fails
    naming its key (planning the scan checks it against the schema without reading rows)."""
    if sql:
        try:
            ds.scanner(filter=sql, columns=[], with_row_id=True).explain_plan()
        except (ValueError, OSError) as err:
            raise ConfigError(f"{key}: cannot apply {sql!r} to {name}: {err}") from err


def tokens_per_sample(config: Config, stage: str, frames: int) -> int:
    """Latent positions of one ``frames``-frame sample at the stage's size."""
    size, factor = getattr(config.stages, stage), config.vae.factor
    return frames * (size.height // factor) * (size.width // factor)


def micro_batch_sizes(config: Config, stage: str) -> dict[int, int]:
    """Samples per micro-batch for each frame count: the explicit table, else as many as
    ``train.tokens_per_micro_batch`` holds, else ``train.micro_batch``."""
    train = config.train
    if train.micro_batch_sizes:
        return dict(zip(train.frame_counts, train.micro_batch_sizes))
    if not train.tokens_per_micro_batch:
        return {frames: train.micro_batch for frames in train.frame_counts}
    sizes = {frames: train.tokens_per_micro_batch // tokens_per_sample(config, stage, frames)
             for frames in train.frame_counts}
    for frames, size in sizes.items():
        if size < 1:
            raise ConfigError(
                f"train.tokens_per_micro_batch: {train.tokens_per_micro_batch} tokens hold no {frames}-frame sample "
                f"of stages.{stage} ({tokens_per_sample(config, stage, frames)} latent positions each)")
    return sizes


def _configured_shapes(train: TrainConfig, supplied: Any) -> list[tuple[tuple[int, int], float]]:
    """The configured (frames, fps) pairs some kept row can supply, with their draw weights."""
    shapes = [((frames, fps), fw * pw) for frames, fw in zip(train.frame_counts, train.frame_weights)
              for fps, pw in zip(train.fps_values, train.fps_weights) if supplied(frames, fps)]
    if not shapes:
        raise ConfigError("train.frame_counts: no kept row can supply any configured (frames, fps) pair")
    return shapes


def validate_shapes(summary: CatalogSummary, config: Config, stage: str) -> None:
    """Frame counts the stage cannot hold, or no row can supply, fail before any worker starts."""
    stage_cfg = getattr(config.stages, stage)
    too_long = [f for f in config.train.frame_counts if f > MAX_FRAMES]
    if too_long:
        raise ConfigError(f"train.frame_counts: {too_long[0]} frames exceeds the {MAX_FRAMES} the curated buckets describe")
    if stage_cfg.width % config.vae.factor or stage_cfg.height % config.vae.factor:
        raise ConfigError(f"stages.{stage}: size must be a multiple of the VAE factor")
    micro_batch_sizes(config, stage)
    _configured_shapes(config.train, summary.rows_for)


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Cumulative draw probabilities; weights <= 0 are never drawn unless all are."""
    w = np.where(weights > 0, weights, 0.0).astype(np.float64)
    w = w if w.sum() > 0 else np.ones(len(w))
    return np.cumsum(w) / w.sum()


def _draw(cdf: np.ndarray, rng: np.random.Generator, size: Optional[int] = None) -> Any:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


class Planner:
    """Draws micro-batch ``index`` of the run from the seed and ``index`` alone.

    Built once per loader from its catalog: for each configured shape, the rows that can
    supply it and their cumulative weights (vectorised, O(rows)); a draw is then two
    binary searches, whatever the catalog's size."""

    TABLES = ("clips", "images")

    def __init__(self, catalog: Catalog, config: Config, stage: str) -> None:
        self.train = config.train
        self.sizes = micro_batch_sizes(config, stage)
        frames, fps, rows = _flat_pairs(catalog.clips.column("frame_fps"))
        rows = rows.astype(np.int32)  # a row per (clip, pair): half the index of int64 positions
        clip_weights = pc.fill_null(catalog.clips.column("weight"), 0.0).to_numpy().astype(np.float64)
        image_weights = (pc.fill_null(catalog.images.column("weight"), 0.0).to_numpy().astype(np.float64)
                         if catalog.images is not None else np.zeros(0))
        self.pools: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for f in self.train.frame_counts:
            for r in self.train.fps_values:
                positions = rows[(frames == f) & (fps == r)]
                tables = np.zeros(len(positions), np.int8)
                weights = clip_weights[positions]
                if f == 1 and len(image_weights):
                    positions = np.concatenate([positions, np.arange(len(image_weights), dtype=np.int32)])
                    tables = np.concatenate([tables, np.ones(len(image_weights), np.int8)])
                    weights = np.concatenate([weights, image_weights])
                if len(positions):
                    self.pools[(f, r)] = (tables, positions, _cumulative(weights))
        shapes = _configured_shapes(self.train, lambda f, r: (f, r) in self.pools)
        self.shapes = [shape for shape, _ in shapes]
        self.shape_cdf = _cumulative(np.array([weight for _, weight in shapes]))

    def plan(self, index: int) -> dict[str, Any]:
        """Micro-batch ``index``: its shape, size, and the rows (plus spares) to load."""
        drawn = index % self.train.overfit_batches if self.train.overfit_batches > 0 else index
        rng = np.random.default_rng([self.train.seed, drawn])
        frames, fps = self.shapes[int(_draw(self.shape_cdf, rng))]
        size = self.sizes[frames]
        tables, positions, cdf = self.pools[(frames, fps)]
        picks = _draw(cdf, rng, size + self.train.spare_samples)
        return {
            "index": index,
            "frames": frames,
            "fps": fps,
            "size": size,
            "tables": [self.TABLES[t] for t in tables[picks]],
            "rows": positions[picks].tolist(),
            "seed": int(rng.integers(2**31)),
        }


def window(length: int, frames: int, step: float, rng: np.random.Generator) -> list[int]:
    """``frames`` indices ``step`` apart from a random start, clamped to ``length`` frames."""
    span = int(np.floor((frames - 1) * step)) + 1
    start = int(rng.integers(0, max(1, length - span + 1)))
    return [min(length - 1, start + int(round(k * step))) for k in range(frames)]


class MicroBatchLoader:
    """Ray Data actor: this rank's step numbers in, same-shape micro-batches out.

    Step ``s`` (counted from ``start_step``) is the run's micro-batch ``s * workers + rank``,
    which the actor plans itself (``Planner``). A micro-batch is decoded frames (``video``),
    or with stored encodings the latents and features the trainer would have computed
    (``latents``, ``image_embeds``, ``text``). Each actor opens the Lance tables once. A
    sample whose media fails to decode (``media_errors``) is logged, replaced by the next
    spare and counted in ``corrupt``; a micro-batch whose spares run out is emitted empty
    and skipped by the trainer (also counted). Any other error is not bad media but a fault
    of the code or the tables, and fails the micro-batch loudly.
    """

    def __init__(self, catalog: "Catalog | ObjectRef", config: Config, stage: str, start_step: int = 0,
                 rank: int = 0) -> None:
        import lance
        import ray

        self.catalog: Catalog = catalog if isinstance(catalog, Catalog) else ray.get(catalog)
        self.config = config
        self.stage = stage
        self.start_step, self.rank = start_step, rank
        self.planner = Planner(self.catalog, config, stage)
        self.size = (getattr(config.stages, stage).width, getattr(config.stages, stage).height)
        self.media = MediaSource(self.catalog.data_dir, self.catalog.images is not None)
        self.encoded = None
        if self.catalog.encoded is not None:
            self.encoded = lance.dataset(str(Path(self.catalog.data_dir) / encoded_table(stage)))

    def __call__(self, steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``steps["item"]``: this rank's step numbers, counted from ``start_step``."""
        out: dict[str, list] = {"index": [], "fps": [], "caption": [], "corrupt": []}
        tensors: dict[str, list] = {}
        for step in steps["item"]:
            row = self.planner.plan((self.start_step + int(step)) * self.config.train.workers + self.rank)
            samples, corrupt = self._load(row)
            out["index"].append(row["index"])
            out["corrupt"].append(corrupt)
            out["fps"].append(row["fps"])
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
        rng = np.random.default_rng(row["seed"])
        samples, corrupt = [], 0
        for table, position in zip(row["tables"], row["rows"]):
            if len(samples) == row["size"]:
                break
            try:
                load = self._stored if self.encoded is not None else self._decoded
                samples.append(load(table, position, row["frames"], row["fps"], rng))
            except media_errors() as err:
                log.warning("micro-batch %d: %s row %d does not decode, a spare stands in: %s: %s",
                            row["index"], table, position, type(err).__name__, err)
                corrupt += 1
        if len(samples) < row["size"]:
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


def put_catalog(data_dir: str, config: Config, stage: str) -> tuple["ObjectRef", Optional["Encodings"], str]:
    """Read the catalog and attach its stored encodings in one Ray task, whose result stays
    in the object store: the driver holds a reference, and each loader maps the one copy.
    Returns that reference, what a trainer needs of the encodings (no per-row index), and a
    line saying whether the trainers encode."""
    import ray
    from ray.exceptions import RayTaskError

    refs = ray.remote(_read_catalog).options(num_returns=3).remote(data_dir, config, stage)
    try:
        message, trainer_encodings = ray.get(refs[:2])
    except RayTaskError as err:  # a ConfigError from the task reads as one raised here
        if isinstance(err.cause, ConfigError):
            raise err.cause from None
        raise
    return refs[2], trainer_encodings, message


def _read_catalog(data_dir: str, config: Config, stage: str) -> tuple[str, Optional["Encodings"], Catalog]:
    from training.encodings import attach_encodings

    catalog = load_catalog(data_dir, config.train.where, config.train.val_where)
    message = attach_encodings(catalog, config, stage)
    return message, catalog.encoded.for_trainers() if catalog.encoded else None, catalog


def plan_dataset(catalog: "ObjectRef", config: Config, stage: str, start_step: int, rank: int):
    """The Ray Dataset of rank ``rank``'s decoded micro-batches from ``start_step`` on.

    Its input is only the step numbers (blocks built here: a read or conversion task would
    wait for a CPU that the trainers hold); the loader plans each micro-batch. Micro-batch
    ``k`` goes to rank ``k % workers``: each rank has its own dataset rather than a streaming
    split of one, so which rank trains which micro-batch does not depend on timing, and a run
    restarted from a checkpoint continues exactly as an unbroken one."""
    import ray

    steps = max(0, config.train.max_steps - start_step)
    return ray.data.from_items(list(range(steps)), override_num_blocks=max(1, min(steps, 64))).map_batches(
        MicroBatchLoader,
        fn_constructor_args=(catalog, config, stage, start_step, rank),
        batch_size=1,
        concurrency=1,
        num_cpus=config.train.loader_cpus,
    )


def rank_dataset_name(rank: int) -> str:
    return f"train_{rank}"
