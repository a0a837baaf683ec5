"""``i2vgen train``, ``i2vgen encode`` and ``i2vgen export``: the training stage's jobs."""

from __future__ import annotations

import argparse
import json
import sys

from commands.options import add_config_args, add_config_flags, config_from


def cmd_train(args: argparse.Namespace) -> int:
    from training.job import TrainingStopped, train
    from training.manifest import CheckpointRefused

    config = config_from(args)
    try:
        summary = train(config, args.stage, args.data, args.run, args.init, args.allow_config_change)
    except (TrainingStopped, CheckpointRefused) as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from training.encode import check_stages, encode

    summaries = encode(args.data, config_from(args), check_stages(args.stage), args.overwrite, not args.quiet)
    print(json.dumps(summaries, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.job import export

    print(export(args.run_dir, args.out, args.diffusers))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the base or refiner with Ray Train + DeepSpeed")
    train.add_argument("--stage", required=True, choices=["base", "refiner"])
    train.add_argument("--data", required=True, help="a curated folder (clips.lance, images.lance)")
    train.add_argument("--run", required=True, help="run folder; the same folder resumes")
    train.add_argument(
        "--init",
        help="start from an export (the refiner starts from the base), SD 2.1 (a diffusers folder or an original "
        "single file: the spatial layers) or, with model.arch=release, the released I2VGen-XL (VGen's .pth or "
        "the diffusers folder)",
    )
    train.add_argument(
        "--allow-config-change", dest="allow_config_change", action="store_true",
        help="resume a run although its model or objective keys differ from its config.yaml (refused otherwise)",
    )
    add_config_flags(train, "train")
    add_config_args(train)
    train.set_defaults(func=cmd_train)

    encode = sub.add_parser(
        "encode", help="store VAE latents and CLIP features of the curated tables, so trainers skip the encoders"
    )
    encode.add_argument("data", help="a curated folder (clips.lance, images.lance)")
    encode.add_argument("--stage", action="append", choices=["base", "refiner"], help="repeatable; default both")
    encode.add_argument("--overwrite", action="store_true", help="re-encode a table made with other encoder settings")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(encode)
    encode.set_defaults(func=cmd_encode)

    export = sub.add_parser("export", help="write a run's EMA weights as one safetensors file")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True)
    export.add_argument("--diffusers", metavar="DIR", help="also write a diffusers-style folder (unet/, scheduler/)")
    export.set_defaults(func=cmd_export)
