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
