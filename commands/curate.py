"""``i2vgen curate``: videos and images into the Lance training tables, and the report on
a curated folder."""

from __future__ import annotations

import argparse
import json

from commands.options import add_config_args, add_config_flags, config_from


def cmd_curate(args: argparse.Namespace) -> int:
    if args.inputs[0] == "report":
        return _curate_report(args)
    if not args.out:
        raise SystemExit("i2vgen curate: --out DIR is required")
    from curation.job import curate

    summary = curate(args.inputs, args.out, config_from(args), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _curate_report(args: argparse.Namespace) -> int:
    if len(args.inputs) != 2:
        raise SystemExit("usage: i2vgen curate report DIR")
    from curation.report import write_report

    print(write_report(args.inputs[1], config_from(args)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    curate = sub.add_parser(
        "curate",
        help="curate videos and images into Lance tables (or: curate report DIR)",
        description="i2vgen curate INPUT... --out DIR | i2vgen curate report DIR",
    )
    curate.add_argument("inputs", nargs="+", help="files, folders, globs, manifests (CSV/JSONL/Parquet); or 'report DIR'")
    curate.add_argument("--out", help="output folder for clips.lance, images.lance, rejects.lance")
    curate.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(curate, "curate")
    add_config_args(curate, default_preset="paper")  # buckets for the paper's frame sizes
    curate.set_defaults(func=cmd_curate)
