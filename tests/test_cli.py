"""The command line: its model commands run as users run them (``python -m pipeline``), its
flags that stand for config keys, and its deprecated flag names."""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys

import pytest

from commands.main import build_parser
from commands.options import CONFIG_FLAGS, flag_overrides
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


def _subparser(command: str) -> argparse.ArgumentParser:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices[command]


@pytest.mark.parametrize("flag", CONFIG_FLAGS, ids=lambda f: f"{f.command} {f.name}")
def test_every_config_flag_sets_its_key(flag) -> None:
    """Each row of the table is a flag of its command, and what it writes resolves to its key."""
    assert flag.name in _subparser(flag.command)._option_string_actions
    value = {bool: True, int: (flag.choices or (1,))[-1], str: "split = 'val'"}[flag.type]
    args = argparse.Namespace(command=flag.command, **{flag.dest: value})
    config = load_config("tiny", [], flag_overrides(args))
    assert functools.reduce(getattr, flag.key.split("."), config) == value


def test_config_flags_win_over_set_and_other_commands_flags_do_not_leak() -> None:
    train = ["train", "--stage", "base", "--data", "d", "--run", "r"]
    args = build_parser().parse_args([*train, "--set", "train.max_steps=7", "--max-steps", "5", "--where", "x > 1"])
    assert flag_overrides(args) == ["train.max_steps=5", 'train.where="x > 1"']
    assert flag_overrides(build_parser().parse_args(["eval", "--where", "x > 1"])) == []  # eval's own --where
    assert flag_overrides(build_parser().parse_args([*train, "--zero-stage", "0"])) == ["train.zero_stage=0"]


def test_refine_from_is_the_flag_and_tr_still_works_with_a_warning(capsys) -> None:
    generate = ["generate", "--image", "in.png", "--base", "base.safetensors", "--out", "out.mp4"]
    assert build_parser().parse_args([*generate, "--refine-from", "500"]).refine_from == 500
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args([*generate, "--tr", "400"]).refine_from == 400
    assert capsys.readouterr().err == "i2vgen generate: --tr is deprecated; use --refine-from\n"
    assert "--tr" not in _subparser("generate").format_help()
