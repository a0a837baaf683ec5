"""Shared fixtures: the tiny preset and a deterministic torch."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
