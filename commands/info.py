"""``i2vgen config show`` and ``i2vgen model-info``: a resolved config, and what a model
costs, from the core alone."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from commands.options import add_config_args, config_from
from pipeline.config.loader import config_to_yaml


def cmd_config_show(args: argparse.Namespace) -> int:
    print(config_to_yaml(config_from(args)), end="")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from pipeline.model_info import format_info, stage_info

    config = config_from(args)
    stages = ["base", "refiner"] if args.stage == "all" else [args.stage]
    infos = [stage_info(config, s) for s in stages]
    if args.json:
        print(json.dumps([asdict(i) | {"trainable": i.trainable} for i in infos], indent=2))
    else:
        print(f"preset {config.preset}")
        print(format_info(infos))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a resolved config as YAML")
    add_config_args(show, preset_positional=True)
    show.set_defaults(func=cmd_config_show)

    info = sub.add_parser("model-info", help="parameter counts per part and FLOPs per forward")
    add_config_args(info, preset_positional=True)
    info.add_argument("--stage", choices=["base", "refiner", "all"], default="all")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_model_info)
