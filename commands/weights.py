"""``i2vgen weights check`` and ``i2vgen weights import``: public weights, checked against a
preset or brought into a stage file that generate and serve load."""

from __future__ import annotations

import argparse

from commands.options import add_config_args, config_from


def cmd_weights_check(args: argparse.Namespace) -> int:
    from pipeline.models.weights_check import LAYOUTS, check_folder, format_report

    if args.layout is not None and args.layout not in LAYOUTS:
        raise SystemExit(f"i2vgen weights check: --layout must be one of {sorted(LAYOUTS)}")
    layout, reports = check_folder(args.dir, config_from(args), args.layout)
    print(format_report(args.dir, layout, reports))
    return 0 if all(r.status in ("ok", "present") for r in reports) else 1


def cmd_weights_import(args: argparse.Namespace) -> int:
    """Public weights -> our stage file (and optionally a diffusers folder), so generate and
    serve run them like a trained export."""
    from pipeline.models.build import build_denoiser
    from pipeline.models.diffusers_folder import save_diffusers_folder
    from pipeline.models.init_weights import initialise
    from pipeline.models.stage_file import save_stage

    config = config_from(args)
    model = build_denoiser(config, args.stage)
    print(initialise(model, args.source, source=args.source))
    print(save_stage(model.state_dict(), args.out, args.stage, config, step=0))
    if args.diffusers:
        print(save_diffusers_folder(model, config, args.stage, args.diffusers))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    weights = sub.add_parser("weights", help="public weights: check a folder, import into a stage file")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    check = weights_sub.add_parser("check", help="which expected files DIR holds and whether they fit the preset")
    check.add_argument("dir")
    check.add_argument("--layout", help="the layout to check against (default: detect; a wrong name lists them)")
    add_config_args(check, default_preset="paper")
    check.set_defaults(func=cmd_weights_check)
    imp = weights_sub.add_parser(
        "import", help="SD 2.1 or the released I2VGen-XL -> a stage file that generate and serve load"
    )
    imp.add_argument("source", help="a diffusers folder or an original single-file checkpoint")
    imp.add_argument("--out", required=True, help="the stage file to write (.safetensors)")
    imp.add_argument("--stage", default="base", choices=["base", "refiner"])
    imp.add_argument("--diffusers", metavar="DIR", help="also write a diffusers-style folder")
    add_config_args(imp, default_preset="release")  # SD 2.1 goes into the paper's UNet: --preset paper
    imp.set_defaults(func=cmd_weights_import)
