"""Shared fixtures: the tiny preset, a deterministic torch, Ray, and tiny exported stages."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's own choice, inherited by every CLI and `ray start` it spawns: its embedded
# clusters write no token into the developer's ~/.ray and print no auth warning. Nothing
# outside tests/ turns auth off (tests/test_cluster_manifests.py greps for it); the token
# paths have their own test (tests/test_cluster_submit.py), which removes this first.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    from pipeline.config import load_config

    # Dropout off so that train-mode and eval-mode forwards can be compared exactly.
    return load_config("tiny", overrides=["unet.temporal_dropout=0.0"])


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster for the tests that run Ray in-process."""
    import ray

    from pipeline.ray_runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory) -> dict[str, Path]:
    """Base and refiner exports of the tiny preset, as ``i2vgen export`` writes them."""
    return write_tiny_exports(tmp_path_factory.mktemp("exports"))


def write_tiny_exports(folder: Path, overrides: tuple[str, ...] = ()) -> dict[str, Path]:
    """Untrained tiny stages in the export format, and an input image."""
    from pipeline.config import load_config
    from pipeline.models.stage_file import save_untrained_stages

    paths = save_untrained_stages(folder, load_config("tiny", overrides=list(overrides)))
    y, x = np.mgrid[0:96, 0:160]
    image = np.stack([x * 255 // 159, y * 255 // 95, (x + y) % 256], -1).astype(np.uint8)
    image[30:60, 60:100] = (250, 40, 40)
    paths["image"] = folder / "input.png"
    Image.fromarray(image).save(paths["image"])
    return paths


@pytest.fixture(scope="session")
def tiny_curated(tmp_path_factory) -> Path:
    """Two generated multi-shot videos and their images, curated with the tiny preset through
    the CLI: the table the training and encoding tests read (copy it before writing to it)."""
    import subprocess
    import sys

    from support.synthetic import write_sample_corpus

    corpus = tmp_path_factory.mktemp("train_corpus")
    write_sample_corpus(corpus, videos=2, seed=5)
    out = tmp_path_factory.mktemp("train_data")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(corpus), "--out", str(out),
                           "--preset", "tiny", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's entry function in this process (the same parser and commands as
    ``python -m pipeline``, without paying the imports again for every call)."""
    from commands.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims ``width x height`` (its CRC made right again)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def thin_png() -> bytes:
    """1,000,000 x 16 pixels in about 50 KB: under the byte and pixel limits."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 1_000_000, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
