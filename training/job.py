"""``i2vgen train`` and ``i2vgen export``: a Ray Train ``TorchTrainer`` over DeepSpeed.

The run folder holds everything: the resolved config, Ray Train's checkpoints (each with
every rank's DeepSpeed shards, the fp32 EMA and the ranks' SHA-256 manifests),
``metrics.jsonl``, TensorBoard logs and ``loss.png``. Running the same command with the
same ``--run`` resumes from the last checkpoint once its files match their manifests; a
worker lost mid-run restarts all workers from it (``train.max_failures``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.config.loader import ConfigError, config_to_dict, from_dict, validate
from pipeline.config.marks import defining_keys, flatten
from pipeline.config.schema import Config
from pipeline.models.build import build_denoiser
from pipeline.models.diffusers_folder import save_diffusers_folder
from pipeline.models.init_weights import initialise
from pipeline.models.stage_file import save_stage
from pipeline.models.weights import load_into
from pipeline.ray_runtime import init_ray
from training.data import plan_dataset, put_catalog, rank_dataset_name, summarize_catalog, validate_shapes
from pipeline.heldout import heldout_rows
from training.checkpointing import EMA_FILE
from training.manifest import verify_checkpoint
from training.loop import read_metrics, train_loop_per_worker
from training.validation import default_val_where

CONFIG_FILE = "config.yaml"


class TrainingStopped(RuntimeError):
    """The workers ended the run before ``train.max_steps``, saying why (a non-finite loss)."""


def stopped_reason(run: Path) -> Optional[str]:
    """Why the workers ended the run early, from the last line of ``metrics.jsonl``."""
    rows = read_metrics(run)
    last = rows[-1] if rows else {}
    return last.get("reason") if last.get("kind") == "stopped" else None


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint Ray Train registered for the run (a folder can exist on disk
    before its report completes; only registered ones are resumed from). None for a run
    folder without one."""
    from ray.train import Result

    if not Path(run_dir).is_dir():
        return None
    try:
        result = Result.from_path(Path(run_dir).resolve())
    except RuntimeError as err:
        if "doesn't exist" not in str(err):  # Ray's answer for a folder with no checkpoint yet
            raise
        return None
    return Path(result.checkpoint.path) if result.checkpoint else None


def checkpoint_step(folder: Optional[Path]) -> int:
    return 0 if folder is None else int(json.loads((folder / "metrics.json").read_text())["step"])


def check_resume_config(run: Path, stage: str, config: Config, allow_change: bool) -> None:
    """Refuse to resume a run under a config whose model or objective differs from the one
    its checkpoints were trained with, naming the first key that differs: a resume would
    otherwise continue on the old weights with, say, another prediction target, and export
    would stamp the new config on them. What may not change: the stage and the keys the schema
    marks as model- or objective-defining, the stage's own among them; the rest (steps,
    intervals, rates, workers, data filters) may. With ``allow_change`` the old config is
    kept beside the new one as ``config.before_step_N.yaml``."""
    folder = latest_checkpoint(run)
    if folder is None or not (run / CONFIG_FILE).exists():
        return
    before = flatten(yaml.safe_load((run / CONFIG_FILE).read_text()))
    now = {"stage": stage, **defining_keys(config, ("model", "objective"), stage)}
    changed = [key for key in sorted(now) if before.get(key) != now[key]]
    if not changed:
        return
    key = changed[0]
    message = (f"{key}: the run {run} was trained with {before.get(key)!r}, this command sets {now.get(key)!r} "
               f"({len(changed)} model or objective keys differ)")
    if not allow_change:
        raise ConfigError(message + "; start a new --run, or pass --allow-config-change to resume under the new config")
    step = checkpoint_step(folder)
    (run / CONFIG_FILE).rename(run / f"config.before_step_{step}.yaml")
    print(f"--allow-config-change: {message}; the old config is kept as config.before_step_{step}.yaml", flush=True)


def train(
    config: Config, stage: str, data_dir: str, run_dir: str, init: Optional[str] = None,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Validate the data, then run (or resume) the stage's training to ``train.max_steps``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if stage not in ("base", "refiner"):
        raise ConfigError(f"--stage: must be base or refiner, got {stage!r}")
    if init:
        if not Path(init).exists():
            raise ConfigError(f"--init: {init} does not exist")
        # Fit the weights to the model's shapes on the meta device: a wrong file fails here,
        # naming its first bad key, not in every worker after the cluster has started.
        initialise(build_denoiser(config, stage, device="meta"), init)
    run = Path(run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    resume_from = latest_checkpoint(run)
    if resume_from is not None:  # fail here, before any worker starts and reads it
        verify_checkpoint(resume_from)
    check_resume_config(run, stage, config, allow_config_change)
    data_dir = str(Path(data_dir).resolve())
    validate_shapes(summarize_catalog(data_dir, config.train.where, config.train.val_where), config, stage)
    if config.train.validate_every:  # fail here, not in every worker, when no clip can validate
        frames = getattr(config.stages, stage).frames
        heldout_rows(data_dir, default_val_where(config.train), frames, config.sampling.fps, option="train.val_where")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not config.train.use_gpu else "cuda")
    init_ray()
    catalog, encodings, message = put_catalog(data_dir, config, stage)
    print(message, flush=True)
    (run / CONFIG_FILE).write_text(yaml.safe_dump({"stage": stage, **config_to_dict(config)}, sort_keys=False))

    def rank_dataset(rank: int):
        """Built at every (re)start, from the step of the newest checkpoint on."""
        return lambda: plan_dataset(catalog, config, stage, checkpoint_step(latest_checkpoint(run)), rank)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config, "stage": stage, "run_dir": str(run), "init": init, "encodings": encodings,
            "data_dir": data_dir,
        },
        scaling_config=ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            storage_path=str(run.parent),
            name=run.name,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}},
        ),
        datasets={rank_dataset_name(r): rank_dataset(r) for r in range(config.train.workers)},
        dataset_config=ingest_config(),
    )
    result = trainer.fit()
    plot_losses(run)
    reason = stopped_reason(run)
    if reason:
        raise TrainingStopped(reason)
    return {"run": str(run), "step": checkpoint_step(latest_checkpoint(run)), "metrics": result.metrics}


def ingest_config():
    """Each rank reads its own dataset whole and in plan order (Ray Data may otherwise
    reorder blocks), so step ``s`` of rank ``r`` is always micro-batch ``s * workers + r``."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=[], execution_options=options)


def plot_losses(run: Path) -> Optional[Path]:
    """``loss.png``: the loss per step and its running mean, from ``metrics.jsonl``, and the
    validation loss against the zero-prediction line where the run validated."""
    rows = read_metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    if not train_rows:  # no run yet, or one stopped before its first log step
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in train_rows])
    losses = np.array([r["loss"] for r in train_rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, ".", alpha=0.35, label="training loss")
    window = max(1, len(losses) // 20)
    ax.plot(steps[window - 1 :], np.convolve(losses, np.ones(window) / window, mode="valid"), label=f"mean of {window}")
    validation = sorted((r["step"], r["validation_loss"], r["zero_prediction_loss"]) for r in rows
                        if r.get("kind") == "validation")
    if validation:
        v_steps, v_loss, zero = (np.array(column) for column in zip(*validation))
        ax.plot(v_steps, v_loss, "o-", color="tab:red", label="validation loss (fixed noise and t)")
        ax.plot(v_steps, zero, "--", color="grey", label="zero prediction, same batch")
    ax.set_xlabel("step")
    target = run_config(run)[1].diffusion.prediction if (run / CONFIG_FILE).exists() else "v"
    ax.set_ylabel({"v": "v-prediction", "epsilon": "noise-prediction", "sample": "x0-prediction"}[target] + " MSE")
    ax.legend()
    fig.savefig(run / "loss.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return run / "loss.png"


def run_config(run_dir: str | Path) -> tuple[str, Config]:
    """The stage and config a run was trained with."""
    raw = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    stage = raw.pop("stage")
    config = from_dict(Config, raw)
    validate(config)
    return stage, config


def export(run_dir: str | Path, out: str | Path, diffusers_dir: Optional[str | Path] = None) -> Path:
    """One safetensors file of the EMA weights of the newest checkpoint, with the stage and
    the config in its metadata, so inference needs nothing else; and, given
    ``diffusers_dir``, the same weights as a diffusers-style folder."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    folder = latest_checkpoint(run)
    if folder is None:
        raise ConfigError(f"RUN_DIR: {run} has no finished checkpoint to export")
    stage, config = run_config(run)
    ema = load_file(str(folder / EMA_FILE))
    path = save_stage(ema, out, stage, config, checkpoint_step(folder))
    if diffusers_dir is not None:
        model = build_denoiser(config, stage)
        load_into(model, ema, source=str(folder / EMA_FILE))
        save_diffusers_folder(model, config, stage, diffusers_dir)
    return path
