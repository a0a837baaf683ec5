"""``i2vgen encode``: stored VAE latents and CLIP features equal what the trainers compute from
the decoded media, re-runs encode only what is missing, and training uses the table only
when it was made by the same encoders and covers every row it may draw."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.config.loader import ConfigError
from pipeline.models.build import build_autoencoder, build_clip
from training.data import MicroBatchLoader, load_catalog
from training.encodings import attach_encodings

# The generated videos run at 24 fps: on a 24 fps grid (and fps draws dividing it) a stored
# window picks exactly the frames the media loader decodes, so the two can be compared
# sample for sample; float32 storage makes the comparison exact.
SAME_GRID = ["encode.grid_fps=24", "train.fps_values=[4,8]", "train.fps_weights=[1,1]", "encode.dtype=float32"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)


def _set(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def encoded(tiny_curated, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("encoded") / "data"
    shutil.copytree(tiny_curated, data)
    proc = _cli("encode", str(data), "--preset", "tiny", "--quiet", *_set(SAME_GRID))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {s["stage"]: s for s in json.loads(proc.stdout)}
    catalog = load_catalog(data, include_val=True)  # validation rows are encoded too
    rows = catalog.clips.num_rows + catalog.images.num_rows
    assert summaries["base"]["encoded"] == rows and summaries["base"]["undecodable"] == 0
    # The paper's refiner drops its text to zeros: no empty prompt's tokens (the release base's test stores them).
    assert summaries["refiner"]["encoded"] == rows
    return data


def _step(step: int) -> dict[str, np.ndarray]:
    """A loader's input: rank 0's step number (the loader plans the micro-batch itself)."""
    return {"item": np.array([step])}


@pytest.mark.parametrize("stage", ["base", "refiner"])
def test_stored_samples_equal_what_the_trainer_encodes(encoded, stage) -> None:
    config = load_config("tiny", overrides=SAME_GRID)
    catalog = load_catalog(encoded)
    assert attach_encodings(catalog, config, stage).startswith("pre-encoded")
    stored_loader = MicroBatchLoader(catalog, config, stage)
    media_loader = MicroBatchLoader(load_catalog(encoded), config, stage)
    vae, clip = build_autoencoder(config.vae), build_clip(config.clip)
    shapes = set()
    for index in range(8):
        stored, media = stored_loader(_step(index)), media_loader(_step(index))
        video = torch.from_numpy(np.array(media["video"][0]))
        pixels = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        latents = torch.from_numpy(np.array(stored["latents"][0]))
        assert torch.equal(latents, vae.encode_video(pixels))  # same frames, same crop, lossless VAE
        if stage == "base":
            embeds = torch.from_numpy(np.array(stored["image_embeds"][0]))
            torch.testing.assert_close(embeds, clip.encode_image(pixels[:, :, 0]), atol=1e-5, rtol=1e-5)
        else:
            text = torch.from_numpy(np.array(stored["text"][0]))
            captions = str(media["caption"][0]).split("\x1f")
            torch.testing.assert_close(text, clip.encode_text(captions), atol=1e-5, rtol=1e-5)
            assert "image_embeds" not in stored
        shapes.add(video.shape[1])
    assert shapes == {1, 8}  # images and clips both came from the stored grid


def test_released_base_stores_image_text_and_the_empty_prompt(encoded, tmp_path, ray_local) -> None:
    """The released architecture reads all three (latents, image embedding, caption) plus the
    empty prompt for dropout, through an SD VAE: the trainer's conditions from stored
    tensors equal those it computes from the media."""
    from pipeline.models.build import build_denoiser
    from training.encode import encode_stage

    data = tmp_path / "data"
    shutil.copytree(encoded, data)
    config = load_config("tiny_release", overrides=SAME_GRID)
    with pytest.raises(ConfigError, match="--overwrite"):  # the tiny preset's table is there
        encode_stage(data, config, "base", progress=False)
    assert encode_stage(data, config, "base", overwrite=True, progress=False)["encoded"] > 0
    catalog = load_catalog(data)
    assert attach_encodings(catalog, config, "base").startswith("pre-encoded")
    assert catalog.encoded.tensors == ("latents", "image_embeds", "text")
    model, clip, vae = build_denoiser(config, "base"), build_clip(config.clip), build_autoencoder(config.vae)
    null_text = torch.from_numpy(catalog.encoded.null_text)
    torch.testing.assert_close(null_text, clip.encode_text([""]), atol=1e-5, rtol=1e-5)
    stored = MicroBatchLoader(catalog, config, "base")(_step(1))
    media = MicroBatchLoader(load_catalog(data), config, "base")(_step(1))
    pixels = torch.from_numpy(np.array(media["video"][0])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    fps = torch.full((pixels.shape[0],), int(stored["fps"][0]))
    conditioning = model.conditioning
    with torch.no_grad():
        computed = conditioning.encode(clip, vae, pixels, str(media["caption"][0]).split("\x1f"))
    ours = conditioning.batch(*conditioning.from_stored(stored, torch.device("cpu")), fps, torch.float32, null_text)
    theirs = conditioning.batch(*computed, fps, torch.float32, clip.encode_text([""]))
    torch.testing.assert_close(ours.latents, theirs.latents, atol=1e-4, rtol=1e-4)
    assert set(ours.conditions) == {"context", "fps", "image_latent", "image_embedding", "null_context"}
    for name, value in ours.conditions.items():
        torch.testing.assert_close(value, theirs.conditions[name], atol=1e-4, rtol=1e-4)


def test_rerun_resumes_and_other_encoders_are_refused(encoded, tmp_path, ray_local) -> None:
    import lance

    data = tmp_path / "data"
    shutil.copytree(encoded, data)
    table = lance.dataset(str(data / "encoded_base.lance"))
    first = table.to_table(columns=["id"], filter="`table` = 'clips'").column("id")[0].as_py()
    table.delete(f"id = '{first}'")  # as if the job had been killed before this row's commit

    config = load_config("tiny", overrides=SAME_GRID)
    message = attach_encodings(load_catalog(data), config, "base")
    assert "encoders run on the trainers" in message and "lacks 1 of" in message
    with pytest.raises(ConfigError, match="train.encoded: require"):
        attach_encodings(load_catalog(data), load_config("tiny", overrides=SAME_GRID + ["train.encoded=require"]),
                         "base")

    from training.encode import encode_stage

    summary = encode_stage(data, config, "base", progress=False)
    assert summary["encoded"] == 1 and summary["already"] > 0  # only the missing row
    assert attach_encodings(load_catalog(data), config, "base").startswith("pre-encoded")

    other = [o for o in SAME_GRID if not o.startswith("encode.dtype")] + ["encode.dtype=float16"]
    proc = _cli("encode", str(data), "--stage", "base", "--preset", "tiny", "--quiet", *_set(other))
    assert proc.returncode == 2
    assert "dtype: encoded with 'float32', this config has 'float16'" in proc.stderr and "--overwrite" in proc.stderr
    message = attach_encodings(load_catalog(data), load_config("tiny", overrides=other), "base")
    assert "does not fit: dtype" in message  # training falls back to the media, saying why
    assert "never" in attach_encodings(load_catalog(data), load_config("tiny", overrides=["train.encoded=never"]), "base")


@pytest.mark.slow
def test_training_on_stored_encodings_builds_no_encoders(encoded, tmp_path) -> None:
    run = tmp_path / "run"
    proc = _cli("train", "--stage", "base", "--data", str(encoded), "--run", str(run), "--preset", "tiny",
                "--max-steps", "4", "--checkpoint-every", "2",
                *_set(SAME_GRID + ["train.encoded=require", "train.log_every=1"]))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pre-encoded" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["pre_encoded"] == 1 for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert _cli("export", str(run), "--out", str(tmp_path / "base.safetensors")).returncode == 0


def test_a_passing_failure_is_retried_and_never_stored_as_undecodable(encoded, monkeypatch) -> None:
    """Out of memory (which a CPU cannot be made to run out of: injected) is retried; a
    blob that is no video is stored as undecodable; a bug fails the batch."""
    import training.encode as encode
    from pipeline.curated_media import MediaSource

    config = load_config("tiny", overrides=SAME_GRID)
    rows = encode._rows_to_encode(encoded, config, "base", set())
    batch = rows.filter(rows.column("table").to_numpy(zero_copy_only=False) == "clips").slice(0, 2)
    encoder = encode.StageEncoder(str(encoded), config, "base", has_images=True)
    monkeypatch.setattr(encode, "RETRY_WAIT_S", 0.0)
    real, calls = encode.StageEncoder._encode, []

    def out_of_memory_once(self, row):
        calls.append(row["id"])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, row)

    monkeypatch.setattr(encode.StageEncoder, "_encode", out_of_memory_once)
    assert all(f > 0 for f in encoder(batch).column("frames").to_pylist())
    assert calls[0] == calls[1]  # the same row again

    def always_out_of_memory(self, row):
        raise MemoryError("injected")

    monkeypatch.setattr(encode.StageEncoder, "_encode", always_out_of_memory)
    with pytest.raises(MemoryError):  # still failing after every attempt: nothing is written
        encoder(batch)

    def no_video(self, table: str, column: str, row_id: int) -> bytes:
        return b"\x00\x00\x00\x18ftypisom, then nothing a decoder can read"

    def bug(self, row_id):
        raise TypeError("a regression, not bad media")

    monkeypatch.setattr(encode.StageEncoder, "_encode", real)
    monkeypatch.setattr(MediaSource, "blob", no_video)
    assert encoder(batch).column("frames").to_pylist() == [0, 0]
    monkeypatch.setattr(MediaSource, "video", bug)
    with pytest.raises(TypeError, match="regression"):
        encoder(batch)
