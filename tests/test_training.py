"""Training end to end through ``python -m pipeline train`` / ``export`` on a tiny curated
table, with 2 CPU workers: ZeRO-2 and ZeRO-3 runs, the 0.2 spatial rate read back from the
running optimizer, resume from the run folder, a worker killed mid-run, the exported EMA."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import cli_in_process
from pipeline.config import load_config
from pipeline.models.build import build_denoiser
from pipeline.models.weights import load_into
from training.job import check_resume_config, checkpoint_step, latest_checkpoint
from training.manifest import sha256


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tiny_curated) -> Path:
    return tiny_curated


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "base"
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(run), "--preset", "tiny",
                "--zero-stage", "2", "--max-steps", "4", "--checkpoint-every", "2",
                # tiny trains at gamma 1.0 after a warm-up; the paper's gamma, at a constant rate, here
                "--set", "train.spatial_lr_scale=0.2", "--set", "train.warmup_steps=0", "--set", "train.log_every=1",
                "--set", "train.micro_batch_sizes=[3,2]")  # images 3 to a micro-batch, 8-frame clips 2
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


def test_zero2_base_run_keeps_the_spatial_rate_ratio(base_run) -> None:
    rows = _metrics(base_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["batch_index"] for r in rows] == [0, 2, 4, 6]  # rank 0 trains micro-batches 0, 2, 4...
    for r in rows:
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > r["samples_per_s"] > 0 and r["nonfinite_step"] is None
        assert r["lr_spatial"] == pytest.approx(0.2 * r["lr_temporal"])  # read from the running optimizer
        assert r["lr_temporal"] == pytest.approx(load_config("tiny").train.lr)
        assert r["micro_batch"] == {1: 3, 8: 2}[r["frames"]]
        assert r["model_tflops_per_s"] > 0 and r["mfu"] is None  # a CPU has no known peak
    assert (base_run / "loss.png").exists() and any((base_run / "tensorboard").iterdir())


def test_mfu_charges_each_token_three_forwards_of_the_stage() -> None:
    from pipeline.model_info import forward_flops, latent_shape
    from training.mfu import device_peak_flops, training_flops_per_token

    config = load_config("tiny")
    _, _, frames, height, width = latent_shape(config, "base")
    per_token = training_flops_per_token(config, "base")
    assert per_token * frames * height * width == pytest.approx(
        3 * forward_flops(build_denoiser(config, "base", device="meta"), config, "base"))
    assert device_peak_flops(config.train, torch.device("cpu")) is None
    assert device_peak_flops(load_config("tiny", overrides=["train.peak_tflops=50"]).train, torch.device("cpu")) == 50e12


def test_export_holds_the_ema_weights(base_run, tmp_path) -> None:
    out = tmp_path / "base.safetensors"
    proc = _cli("export", str(base_run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["stage"] == "base" and meta["step"] == "4"
    model = build_denoiser(load_config("tiny"), "base")
    exported = load_file(str(out))
    load_into(model, exported)  # every key fits the model
    ema = load_file(str(latest_checkpoint(base_run) / "ema.safetensors"))
    for key, value in ema.items():
        assert torch.equal(exported[key], value)
    fresh = build_denoiser(load_config("tiny"), "base").state_dict()
    moved = [k for k in exported if "conv4" in k and not torch.equal(exported[k], fresh[k])]
    assert moved  # zero-initialised temporal layers were trained away from zero


@pytest.mark.slow
def test_rerun_resumes_from_the_run_folder(base_run, data) -> None:
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(base_run), "--preset", "tiny",
                "--zero-stage", "2", "--max-steps", "6", "--checkpoint-every", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from step 4" in proc.stdout + proc.stderr
    assert [r["step"] for r in _metrics(base_run)][-2:] == [5, 6]


def test_a_resume_that_changes_the_objective_is_refused_naming_the_key(base_run, data, tmp_path) -> None:
    before = (base_run / "config.yaml").read_text()
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(base_run), "--preset", "tiny",
                "--max-steps", "8", "--set", "diffusion.prediction=epsilon")
    assert proc.returncode != 0
    assert "diffusion.prediction: the run" in proc.stderr and "'sample'" in proc.stderr and "--allow-config-change" in proc.stderr
    assert (base_run / "config.yaml").read_text() == before  # nothing was touched
    # the way out keeps the old config beside the new one
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    step = json.loads((latest_checkpoint(copy) / "metrics.json").read_text())["step"]
    config = load_config("tiny", overrides=["diffusion.prediction=epsilon"])
    check_resume_config(copy, "base", config, allow_change=True)
    assert (copy / f"config.before_step_{step}.yaml").read_text() == before
    assert not (copy / "config.yaml").exists()  # train() writes the new one next
    # steps, rates and intervals may change
    check_resume_config(base_run, "base", load_config("tiny", overrides=["train.lr=0.5", "train.max_steps=9"]), False)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_resume_from_a_tampered_checkpoint_is_refused_naming_the_file(base_run, data, tmp_path) -> None:
    """One flipped byte in one rank's optimizer shard: the resume stops before Ray starts."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    step = checkpoint_step(latest_checkpoint(run))
    _flip_a_byte(latest_checkpoint(run) / "state" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    before = (run / "metrics.jsonl").read_text()
    proc = cli_in_process("train", "--stage", "base", "--data", str(data), "--run", str(run), "--preset", "tiny",
                          "--zero-stage", "2", "--max-steps", str(step + 2), "--checkpoint-every", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"(step {step})" in proc.stderr and "Nothing was loaded" in proc.stderr
    assert "state/zero_pp_rank_1_mp_rank_00_optim_states.pt: changed since it was saved" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before


class _Payload:
    """A pickle that runs a shell command when loaded the way DeepSpeed loads its shards."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_shards_load_weights_only_and_a_planted_pickle_runs_nothing(base_run, tmp_path) -> None:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from training.weights_only import WeightsOnlyCheckpointEngine

    safe = WeightsOnlyCheckpointEngine()
    shards = sorted((latest_checkpoint(base_run) / "state").glob("*.pt"))
    assert len(shards) == 3  # model states and both ranks' ZeRO-2 optimizer partitions
    for shard in shards:
        assert safe.load(str(shard)).keys() == torch.load(shard, weights_only=False).keys()
    planted, marker = tmp_path / "planted.pt", tmp_path / "payload_ran"
    torch.save({"module": _Payload(marker)}, planted)
    with pytest.raises(Exception, match="posix.system"):
        safe.load(str(planted))
    assert not marker.exists()
    TorchCheckpointEngine().load(str(planted))  # DeepSpeed's own engine: the payload runs
    assert marker.exists()


@pytest.mark.slow
def test_a_planted_pickle_behind_a_rewritten_manifest_runs_nothing_on_the_workers(base_run, data, tmp_path) -> None:
    """Someone who can write the run folder replaces the model states and rewrites the
    manifest to match: the manifests pass, and the workers' weights-only load refuses it."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    folder, marker = latest_checkpoint(run), tmp_path / "payload_ran"
    shard = "state/mp_rank_00_model_states.pt"
    torch.save({"module": _Payload(marker)}, folder / shard)
    manifest = json.loads((folder / "manifest_rank0.json").read_text())
    manifest["files"][shard] = sha256(folder / shard)
    (folder / "manifest_rank0.json").write_text(json.dumps(manifest))
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(run), "--preset", "tiny",
                "--zero-stage", "2", "--max-steps", str(checkpoint_step(folder) + 2), "--checkpoint-every", "2",
                "--set", "train.max_failures=0")
    assert proc.returncode != 0
    assert "posix.system" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]
    assert not marker.exists()


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = latest_checkpoint(run)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="state")
    return {**{f"model.{k}": v for k, v in weights.items()},
            **{f"ema.{k}": v for k, v in load_file(str(folder / "ema.safetensors")).items()}}


@pytest.mark.slow
def test_a_resumed_run_is_bit_identical_to_an_unbroken_one(data, tmp_path) -> None:
    """3 steps, stop, resume to 6 under ZeRO-2 gives the weights, the EMA and the metrics of
    6 unbroken steps: the same micro-batches, noise, timesteps and dropout after the resume.
    The checkpoints leave nothing in the temporary folder."""
    temp = Path(tempfile.gettempdir())
    leftovers = set(temp.glob("i2vgen-ckpt-*"))
    common = ("--stage", "base", "--data", str(data), "--preset", "tiny", "--zero-stage", "2",
              "--checkpoint-every", "2", "--set", "train.log_every=1")
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    for run, steps in ((unbroken, 6), (resumed, 3), (resumed, 6)):
        proc = _cli("train", *common, "--run", str(run), "--max-steps", str(steps))
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from step 3" in proc.stdout + proc.stderr
    a, b = _final_state(unbroken), _final_state(resumed)
    assert set(a) == set(b) and any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    fields = ("step", "loss", "batch_index", "max_timestep", "lr_temporal", "lr_spatial")
    rows = [[{f: r[f] for f in fields} for r in _metrics(run)] for run in (unbroken, resumed)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == list(range(1, 7))
    assert set(temp.glob("i2vgen-ckpt-*")) <= leftovers


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_naming_the_step(data, tmp_path) -> None:
    run = tmp_path / "nan"
    proc = _cli("train", "--stage", "base", "--data", str(data), "--run", str(run), "--preset", "tiny",
                "--max-steps", "6", "--checkpoint-every", "2", "--set", "train.log_every=3",
                "--set", "train.debug_nan_step=2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    # found at the checkpoint step 2, before its checkpoint: the run keeps none, and says which batch
    assert "training stopped: step 2: the loss is not finite on rank 0 (plan micro-batch 2)" in proc.stderr
    assert latest_checkpoint(run) is None and [r["kind"] for r in _metrics(run)] == ["stopped"]


@pytest.mark.slow
def test_zero3_refiner_starts_from_the_base_export(base_run, data, tmp_path) -> None:
    base = tmp_path / "base.safetensors"
    assert _cli("export", str(base_run), "--out", str(base)).returncode == 0
    run = tmp_path / "refiner"
    # decay 0: the EMA is the weights themselves, so the partitions each rank averaged must
    # gather into exactly the model DeepSpeed's own ZeRO-3 checkpoint holds
    proc = _cli("train", "--stage", "refiner", "--data", str(data), "--run", str(run), "--preset", "tiny",
                "--zero-stage", "3", "--max-steps", "3", "--checkpoint-every", "3", "--init", str(base),
                "--set", "train.ema_decay=0.0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _metrics(run)
    assert rows[-1]["step"] == 3
    assert max(r["max_timestep"] for r in rows) < 600
    refiner = tmp_path / "refiner.safetensors"
    assert _cli("export", str(run), "--out", str(refiner)).returncode == 0
    state = load_file(str(refiner))
    assert not any(k.startswith("global_encoder.") for k in state)
    load_into(build_denoiser(load_config("tiny"), "refiner"), state)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(latest_checkpoint(run)), tag="state")
    assert set(weights) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(value, weights[key].float())
    assert any(not torch.equal(state[k], v) for k, v in load_file(str(base)).items() if k in state)  # it trained


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(data, tmp_path) -> None:
    import psutil

    run = tmp_path / "killed"
    log = tmp_path / "train.log"  # a file, not a pipe: nobody reads a pipe while we poll
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--stage", "base", "--data", str(data), "--run", str(run),
         "--preset", "tiny", "--max-steps", "24", "--checkpoint-every", "2", "--set", "train.log_every=1"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        # once Ray has registered a checkpoint, and well before the last step
        try:
            ready = run.exists() and latest_checkpoint(run) is not None and _metrics(run)[-1]["step"] < 16
        except (ValueError, IndexError):  # a file caught mid-write
            ready = False
        if ready:
            workers = [p for p in psutil.process_iter(["cmdline", "create_time"])
                       if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or []) and p.info["create_time"] >= started]
            if workers:  # only this run's workers, not a finished run's that is still shutting down
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed = True
        time.sleep(0.2)
    proc.wait(timeout=600)
    output = log.read_text()
    assert killed, "no training worker was found to kill"
    assert proc.returncode == 0, output[-4000:]
    assert "resuming from step" in output
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 25))  # each step once, the redone ones included
    # the restarted run trained exactly the micro-batches an unbroken one would have
    assert all(r["batch_index"] == 2 * (r["step"] - 1) for r in rows)
    assert json.loads((latest_checkpoint(run) / "metrics.json").read_text())["step"] == 24


@pytest.mark.slow
def test_one_clip_is_memorised_and_regenerated_from_unseen_noise(data, tmp_path) -> None:
    """train.overfit_batches=1 with one sample: every step trains the same clip (rows and
    frames) with fresh noise and timesteps, so the stack (data, encoders, loss, DeepSpeed
    step, EMA, export, sampler) must learn to produce that clip from any noise. Sampled from
    the clip's first frame with a seed never used in training, the video must match it, and
    match every frame's motion far better than the first frame held still does."""
    import numpy as np

    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import make_request

    settings = ["train.overfit_batches=1", "train.micro_batch=1", "train.frame_counts=[8]", "train.frame_weights=[1]",
                "train.fps_values=[8]", "train.fps_weights=[1]", "train.lr=0.002", "train.warmup_steps=10",
                "stages.base.condition_dropout=0.0", "train.log_every=1"]
    clips_only, clip_id, clip = _fastest_moving_clip(data, tmp_path / "data", settings)
    settings.append(f"train.where=clip_id = '{clip_id}'")
    run = tmp_path / "overfit"
    proc = _cli("train", "--stage", "base", "--data", str(clips_only), "--run", str(run), "--preset", "tiny",
                "--max-steps", str(OVERFIT_STEPS), "--checkpoint-every", str(OVERFIT_STEPS),
                *[a for s in settings for a in ("--set", s)], timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [r["loss"] for r in _metrics(run) if "loss" in r]
    assert len(losses) == OVERFIT_STEPS
    exported = _cli("export", str(run), "--out", str(tmp_path / "base.safetensors"))
    assert exported.returncode == 0, exported.stderr[-2000:]

    cascade = Cascade.from_files(load_config("tiny"), tmp_path / "base.safetensors")
    request = make_request(load_config("tiny"), clip[0], frames=8, fps=8, steps=20, guidance=1.0, seed=987654)
    video = cascade.generate([request])[0]
    # The baseline is the first frame held still: what a model that learned only the image
    # condition, and none of the clip's motion, would score. The fastest clip moves about 17
    # grey levels per frame, so that baseline falls from about 21.5 to 14 dB over its frames.
    still = np.repeat(clip[:1], len(clip), axis=0)
    regenerated, held = _psnr(video, clip, axis=(1, 2, 3)), _psnr(still, clip, axis=(1, 2, 3))
    overall = float(_psnr(video, clip))
    summary = (f"{clip_id} regenerated at {overall:.1f} dB, per frame {np.round(regenerated, 1).tolist()}; the first "
               f"frame held still {np.round(held, 1).tolist()} (losses {losses[0]:.3f} -> {losses[-1]:.3f})")
    assert overall >= 20.0 and overall >= float(_psnr(still, clip)) + 4.0, summary
    assert np.all(regenerated[1:] >= held[1:] + 3.0), summary  # the motion of every frame was learned


def _fastest_moving_clip(data: Path, folder: Path, settings: list[str]) -> tuple[Path, str, "np.ndarray"]:
    """A copy of ``data``'s clips table alone (``train.where`` on ``clip_id`` then applies to
    every table), the id of the clip whose planned 8-frame window moves most, and that window
    (F, H, W, 3) at the base size. Chosen by its motion, not by the table's row order, which
    follows the order in which curation's workers finished: a slow clip would make the
    held-still baseline too close to beat by the margin the test asks."""
    import numpy as np

    from pipeline.config import ConfigError
    from pipeline.tables import CURATED_VERSIONS
    from training.data import MicroBatchLoader, load_catalog

    folder.mkdir()
    shutil.copytree(data / "clips.lance", folder / "clips.lance")
    shutil.copy(data / CURATED_VERSIONS, folder / CURATED_VERSIONS)
    windows = {}
    for clip_id in load_catalog(folder).clips.column("clip_id").to_pylist():
        config = load_config("tiny", overrides=[*settings, f"train.where=clip_id = '{clip_id}'"])
        try:
            catalog = load_catalog(folder, config.train.where, config.train.val_where)
            windows[clip_id] = MicroBatchLoader(catalog, config, "base")({"item": np.array([0])})["video"][0][0]
        except ConfigError:  # the clip supplies no 8-frame window at 8 fps
            continue
    assert windows, "no clip of the curated table supplies 8 frames at 8 fps"
    motion = {clip_id: float(np.mean(np.abs(np.diff(window.astype(np.float64), axis=0))))
              for clip_id, window in windows.items()}
    fastest = max(motion, key=motion.get)
    return folder, fastest, windows[fastest]


def _psnr(video: "np.ndarray", reference: "np.ndarray", axis: Any = None) -> "np.ndarray":
    import numpy as np

    mse = np.mean((video.astype(np.float64) - reference.astype(np.float64)) ** 2, axis=axis)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


OVERFIT_STEPS = 200


def test_stored_clips_are_read_exactly_by_seeking(data) -> None:
    """The loader reads windows by seeking with decord: the stored mp4s must carry real
    timestamps (frames once all landed at t = 0 and decord returned the wrong ones)."""
    import io

    import av
    import decord
    import numpy as np

    from pipeline.curated_media import MediaSource
    from training.data import load_catalog

    catalog = load_catalog(data)
    media = MediaSource(str(data), images=False)
    for row_id in catalog.clips.column("_rowid").to_pylist()[:3]:
        with media.datasets["clips"].take_blobs("video", ids=[row_id])[0] as f:
            blob = f.read()
        decoded = [frame.to_ndarray(format="rgb24") for frame in av.open(io.BytesIO(blob)).decode(video=0)]
        strided = list(range(len(decoded) // 3, len(decoded), 5))
        read = decord.VideoReader(io.BytesIO(blob), num_threads=1).get_batch(strided).asnumpy()
        assert all(np.array_equal(read[k], decoded[i]) for k, i in enumerate(strided))


def test_the_loader_replaces_undecodable_media_and_fails_on_anything_else(data, monkeypatch, caplog) -> None:
    import numpy as np

    import training.data
    from pipeline.curated_media import MediaSource
    from training.data import MicroBatchLoader, load_catalog

    config = load_config("tiny", overrides=["train.frame_counts=[8]", "train.frame_weights=[1]"])  # clips only
    batch = {"item": np.array([0])}  # rank 0's first step
    loader = MicroBatchLoader(load_catalog(data), config, "base")
    assert loader(batch)["corrupt"][0] == 0
    real, calls = MediaSource.blob, []

    def first_one_damaged(self, table: str, column: str, row_id: int) -> bytes:
        calls.append(row_id)
        data = real(self, table, column, row_id)
        return data[:64] if len(calls) == 1 else data  # a clip cut short in storage

    monkeypatch.setattr(MediaSource, "blob", first_one_damaged)
    with caplog.at_level("WARNING", logger="training.data"):
        out = loader(batch)
    assert out["corrupt"][0] == 1 and len(out["video"][0]) == config.train.micro_batch  # a spare stood in
    assert "does not decode, a spare stands in" in caplog.text

    def regression(*args, **kwargs):
        raise TypeError("a bug, not bad media")

    monkeypatch.setattr(training.data, "crop_resize", regression)
    with pytest.raises(TypeError, match="a bug"):
        loader(batch)


def test_bad_data_fails_before_any_worker_starts(data, tmp_path) -> None:
    proc = cli_in_process("train", "--stage", "base", "--data", str(data), "--run", str(tmp_path / "r"), "--preset", "tiny",
                "--where", "aesthetic > 100")
    assert proc.returncode == 2 and "no kept rows" in proc.stderr
    proc = cli_in_process("train", "--stage", "base", "--data", str(tmp_path / "nothing"), "--run", str(tmp_path / "r2"),
                "--preset", "tiny")
    assert proc.returncode == 2 and "curate" in proc.stderr
    broken = tmp_path / "broken_table"
    shutil.copytree(data, broken)
    import lance

    lance.dataset(str(broken / "clips.lance")).drop_columns(["frame_fps"])
    (broken / "curated.json").unlink()  # as an older curation left it: no recorded versions, the latest is read
    proc = cli_in_process("train", "--stage", "base", "--data", str(broken), "--run", str(tmp_path / "r3"), "--preset", "tiny")
    assert proc.returncode == 2 and "frame_fps" in proc.stderr
