"""YAML in, validated ``Config`` out: presets, files and dotted ``--set`` overrides.

Order of precedence: the preset, then each ``--config`` file, then each ``--set key=value``.
Any unknown key, wrong type or inconsistent combination raises ``ConfigError`` whose message
starts with the key's dotted path, so a user sees at once which line to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from pipeline.config.schema import BALANCE_COLUMNS, CAMERA_CLASSES, Config, CurationConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(
    preset: str = "tiny",
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
) -> Config:
    """Resolve a preset, config files and ``key=value`` overrides into a validated Config."""
    if preset not in preset_names():
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {preset_names()}")
    raw = config_to_dict(Config())
    _deep_merge(raw, _read_yaml(PRESET_DIR / f"{preset}.yaml"))
    for path in files:
        _deep_merge(raw, _read_yaml(Path(path)))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    raw["preset"] = preset
    config = from_dict(Config, raw)
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML so numbers, bools and lists work."""
    if "=" not in item:
        raise ConfigError(f"{item}: an override must look like key.path=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{item}: the override has no key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {err}") from err
    return key, value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key_path}: unknown key{hint}; known keys: {sorted(known)}")
        kwargs[key] = _coerce(hints[key], value, key_path)
    missing = [
        name
        for name, f in known.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required key is missing")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")


def _validate_release(config: Config) -> None:
    """What diffusers' ``I2VGenXLUNet`` fixes: 4 latent channels (its image-latent branches
    are built for them), an FPS embedding, and 8 heads in the transformer after conv_in."""
    unet = config.unet
    if config.vae.kind != "sd":
        raise ConfigError("vae.kind: model.arch=release needs the sd VAE (4 latent channels)")
    if not unet.use_fps_embedding:
        raise ConfigError("unet.use_fps_embedding: model.arch=release always has the FPS embedding")
    if config.model.image_concat:
        raise ConfigError("model.image_concat: model.arch=release always concatenates; set it only for arch=paper")
    if unet.conv_in_temporal_heads != 8:
        raise ConfigError("unet.conv_in_temporal_heads: model.arch=release fixes it at 8")


def validate(config: Config) -> None:
    """Cross-field checks that single-field types cannot express."""
    unet, vae, enc = config.unet, config.vae, config.global_encoder
    levels = len(unet.block_out_channels)
    if len(unet.attention_levels) != levels:
        raise ConfigError(
            f"unet.attention_levels: has {len(unet.attention_levels)} entries but "
            f"unet.block_out_channels has {levels}"
        )
    for i, ch in enumerate(unet.block_out_channels):
        if ch % unet.norm_num_groups:
            raise ConfigError(
                f"unet.block_out_channels[{i}]: {ch} is not divisible by "
                f"unet.norm_num_groups={unet.norm_num_groups}"
            )
        if ch % unet.head_dim:
            raise ConfigError(
                f"unet.block_out_channels[{i}]: {ch} is not divisible by unet.head_dim={unet.head_dim}"
            )
    latent = 4 if vae.kind == "sd" else 3 * vae.factor**2
    for key in ("in_channels", "out_channels"):
        if getattr(unet, key) != latent:
            raise ConfigError(
                f"unet.{key}: {getattr(unet, key)} but the {vae.kind} VAE gives {latent} latent channels"
            )
    if unet.block_out_channels[0] < unet.in_channels:
        # conv_in maps in_channels to block_out_channels[0] per position (plus its 3x3
        # neighbours): with fewer outputs, directions of the latent fall in its null space,
        # the prediction cannot respond to x_t there, and sampling keeps their noise.
        raise ConfigError(
            f"unet.block_out_channels[0]: {unet.block_out_channels[0]} is fewer than unet.in_channels="
            f"{unet.in_channels}; conv_in would hide part of every latent from the model"
        )
    if vae.scaling_factor is not None and vae.scaling_factor <= 0:
        raise ConfigError(f"vae.scaling_factor: must be positive, got {vae.scaling_factor}")
    if vae.kind == "sd" and vae.factor != 2 ** (len(vae.block_out_channels) - 1):
        raise ConfigError(
            f"vae.factor: an sd VAE with {len(vae.block_out_channels)} levels downsamples by "
            f"{2 ** (len(vae.block_out_channels) - 1)}, got {vae.factor}"
        )
    if config.model.arch == "release":
        _validate_release(config)
    if enc.pool_size != 2 ** (len(enc.stage_channels) + 1):
        raise ConfigError(
            f"global_encoder.pool_size: {enc.pool_size} must be 2 * 2**len(stage_channels) = "
            f"{2 ** (len(enc.stage_channels) + 1)} so the stages end at 2x2"
        )
    # Odd latent sizes are fine (720 / 8 = 90 -> 45 -> 23 -> 12; upsampling follows the skips).
    multiple = vae.factor
    for name in ("base", "refiner"):
        stage = getattr(config.stages, name)
        for side in ("width", "height"):
            if getattr(stage, side) % multiple:
                raise ConfigError(
                    f"stages.{name}.{side}: {getattr(stage, side)} must be a multiple of {multiple} "
                    f"(the VAE's downsampling factor)"
                )
        if not 0 < stage.max_timestep <= config.diffusion.num_train_timesteps:
            raise ConfigError(
                f"stages.{name}.max_timestep: must lie in 1..{config.diffusion.num_train_timesteps}"
            )
        if not 0.0 <= stage.condition_dropout <= 1.0:
            raise ConfigError(f"stages.{name}.condition_dropout: must lie in [0, 1]")
    train = config.train
    for values, weights in (("frame_counts", "frame_weights"), ("fps_values", "fps_weights")):
        if len(getattr(train, values)) != len(getattr(train, weights)) or not getattr(train, values):
            raise ConfigError(f"train.{weights}: needs one weight per entry of train.{values}")
    if train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage: {train.zero_stage} is not one of 0, 1, 2, 3")
    if train.micro_batch < 1 or train.workers < 1:
        raise ConfigError("train.micro_batch: and train.workers must be at least 1")
    if train.bucket_elements < 1:
        raise ConfigError(f"train.bucket_elements: must be at least 1, got {train.bucket_elements}")
    if train.peak_tflops < 0:
        raise ConfigError(f"train.peak_tflops: must be >= 0 (0: look the device up), got {train.peak_tflops}")
    if train.tokens_per_micro_batch < 0:
        raise ConfigError(f"train.tokens_per_micro_batch: must be >= 0 (0: off), got {train.tokens_per_micro_batch}")
    if train.micro_batch_sizes:
        if train.tokens_per_micro_batch:
            raise ConfigError("train.micro_batch_sizes: set it or train.tokens_per_micro_batch, not both")
        if len(train.micro_batch_sizes) != len(train.frame_counts) or min(train.micro_batch_sizes) < 1:
            raise ConfigError(f"train.micro_batch_sizes: needs one size >= 1 per entry of train.frame_counts "
                              f"{train.frame_counts}, got {train.micro_batch_sizes}")
    for key in ("checkpoint_every", "log_every", "max_steps"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be at least 1, got {getattr(train, key)}")
    if train.validate_every < 0 or train.validation_clips < 1:
        raise ConfigError("train.validate_every: must be >= 0 (0: never) and train.validation_clips >= 1")
    for key in ("warmup_steps", "spare_samples", "overfit_batches", "debug_nan_step"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(train, key)}")
    if train.validation_sampling_steps < 1:
        raise ConfigError(f"train.validation_sampling_steps: must be at least 1, got {train.validation_sampling_steps}")
    for key in ("chunk_rows", "actors", "batch_frames"):
        if getattr(config.encode, key) < 1:
            raise ConfigError(f"encode.{key}: must be at least 1, got {getattr(config.encode, key)}")
    if not 0.0 <= train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must lie in [0, 1), got {train.ema_decay}")
    off_grid = [f for f in train.fps_values if config.encode.grid_fps % f]
    if off_grid:
        raise ConfigError(
            f"encode.grid_fps: {config.encode.grid_fps} is not a multiple of train.fps_values entry {off_grid[0]}"
        )
    _validate_curation(config)
    if not 0.0 <= config.curation.val_fraction < 1.0:
        raise ConfigError(f"curation.val_fraction: must lie in [0, 1), got {config.curation.val_fraction}")
    if not 0 < config.sampling.refine_from <= config.diffusion.num_train_timesteps:
        raise ConfigError("sampling.refine_from: must lie in 1..num_train_timesteps")
    for name in ("base", "refiner"):
        deployment = getattr(config.serving, name)
        if not 0 <= deployment.min_replicas <= deployment.max_replicas or deployment.max_replicas < 1:
            raise ConfigError(f"serving.{name}.max_replicas: needs 0 <= min_replicas <= max_replicas, max >= 1")
        if deployment.max_batch_size < 1:
            raise ConfigError(f"serving.{name}.max_batch_size: must be at least 1")
    serving = config.serving
    for key in ("max_pending_jobs", "keep_finished_jobs", "job_attempts", "retry_after_s"):
        if getattr(serving, key) < 1:
            raise ConfigError(f"serving.{key}: must be at least 1, got {getattr(serving, key)}")
    for key in ("keep_finished_s", "stalled_job_s", "sync_timeout_s"):
        if not getattr(serving, key) > 0:
            raise ConfigError(f"serving.{key}: must be positive, got {getattr(serving, key)}")
    if not serving.results_dir:
        raise ConfigError("serving.results_dir: must name a folder or a URI")


def _span_seconds(frames: int, sample_fps: float) -> float:
    """How long a run of ``frames`` frames spaced at ``1 / sample_fps`` lasts."""
    return (frames - 1) / sample_fps


def _validate_signals(cfg: CurationConfig) -> None:
    """Camera classes, balancing columns, captioning, and the near-duplicate and text thresholds."""
    for key in ("drop_camera", "keep_camera"):
        unknown = [c for c in getattr(cfg.filters, key) if c not in CAMERA_CLASSES]
        if unknown:
            raise ConfigError(f"curation.filters.{key}: unknown camera class(es) {unknown}; "
                              f"the classes are {list(CAMERA_CLASSES)}")
    unknown = [c for c in cfg.balance_on if c not in BALANCE_COLUMNS]
    if unknown:
        raise ConfigError(f"curation.balance_on: cannot stratify on {unknown}; choose from {list(BALANCE_COLUMNS)}")
    if not 0 <= cfg.filters.max_text_area <= 1:
        raise ConfigError(f"curation.filters.max_text_area: a share of the frame, 0 to 1, got {cfg.filters.max_text_area}")
    for key in ("static_speed", "shaky_speed"):
        if not getattr(cfg.camera, key) > 0:
            raise ConfigError(f"curation.camera.{key}: must be positive, got {getattr(cfg.camera, key)}")
    if cfg.shots.detect_fps < 0:
        raise ConfigError(f"curation.shots.detect_fps: must be >= 0 (0: every frame), got {cfg.shots.detect_fps}")
    if cfg.scoring.text_fps < 0 or cfg.scoring.text_width < 16:
        raise ConfigError(f"curation.scoring.text_fps / text_width: need text_fps >= 0 (0: off) and text_width >= 16, "
                          f"got {cfg.scoring.text_fps} and {cfg.scoring.text_width}")
    captioning = cfg.captioning
    for key in ("max_new_tokens", "batch_size", "memory_mb"):
        if getattr(captioning, key) < 1:
            raise ConfigError(f"curation.captioning.{key}: must be at least 1, got {getattr(captioning, key)}")
    if captioning.gpus < 0:
        raise ConfigError(f"curation.captioning.gpus: must be >= 0, got {captioning.gpus}")
    near = cfg.near_duplicates
    for key in ("min_similarity", "min_clip_similarity"):
        if not 0 < getattr(near, key) <= 1:
            raise ConfigError(f"curation.near_duplicates.{key}: a cosine in (0, 1], got {getattr(near, key)}")
    for key in ("partitions_probed", "index_min_rows"):
        if getattr(near, key) < 1:
            raise ConfigError(f"curation.near_duplicates.{key}: must be at least 1, got {getattr(near, key)}")


def _validate_curation(config: Config) -> None:
    """Limits that would otherwise fail a job hours in, and (frames, fps) shapes that
    training would sample but no clip that curation cuts could ever supply."""
    cfg, train = config.curation, config.train
    if cfg.max_retries < 0 or cfg.images_per_task < 1:
        raise ConfigError("curation.max_retries: must be >= 0 and curation.images_per_task >= 1")
    for key in ("file_timeout_s", "retry_backoff_s", "commit_every_s"):
        if getattr(cfg, key) < 0 or (key == "file_timeout_s" and not cfg.file_timeout_s > 0):
            raise ConfigError(f"curation.{key}: must be positive, got {getattr(cfg, key)}")
    for key in ("probe.max_frames", "probe.max_seconds", "probe.max_pixels", "worker_memory_mb",
                "scoring.aesthetic_memory_mb"):
        value = functools.reduce(getattr, key.split("."), cfg)
        if not value > 0:
            raise ConfigError(f"curation.{key}: must be positive, got {value}")
    _validate_signals(cfg)
    fastest = max(train.fps_values)
    for frames in train.frame_counts:
        if frames < 1 or _span_seconds(frames, fastest) > cfg.split.max_seconds:
            raise ConfigError(
                f"train.frame_counts: {frames} frames fit in no curated clip: even at {fastest} fps "
                f"(the largest of train.fps_values) they span {_span_seconds(frames, fastest):g} s, "
                f"more than curation.split.max_seconds={cfg.split.max_seconds:g}"
            )
    if min(train.fps_values) < 1:
        raise ConfigError(f"train.fps_values: every rate must be at least 1 fps, got {min(train.fps_values)}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path}: does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
        node = child
    node[parts[-1]] = value
