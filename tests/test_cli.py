"""The CLI's model commands, run as users run them: ``python -m pipeline``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.config import load_config
from pipeline.model_info import stage_info


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)


def test_model_info_json_agrees_with_the_library() -> None:
    proc = _cli("model-info", "tiny", "--json", "--set", "unet.head_dim=8")
    assert proc.returncode == 0, proc.stderr
    infos = {i["stage"]: i for i in json.loads(proc.stdout)}
    expected = stage_info(load_config("tiny", overrides=["unet.head_dim=8"]), "base")
    assert infos["base"]["params"] == expected.params
    assert infos["base"]["forward_flops"] == expected.forward_flops
    assert infos["refiner"]["params"]["global_encoder"] == 0


@pytest.mark.slow  # builds the 1.4B-parameter paper model on the meta device in a fresh process (~15 s)
def test_model_info_table_for_paper_prints_every_part() -> None:
    proc = _cli("model-info", "paper", "--stage", "base")
    assert proc.returncode == 0, proc.stderr
    for word in ("spatial", "865,910,724", "temporal", "global_encoder", "clip_image", "forward GFLOPs"):
        assert word in proc.stdout


def test_model_info_rejects_a_bad_override() -> None:
    proc = _cli("model-info", "tiny", "--set", "unet.cross_attention_dim=48")
    assert proc.returncode == 2
    assert "unet.cross_attention_dim" in proc.stderr
