"""The ``i2vgen`` command line; ``python -m pipeline`` is the same (what ``ray job submit`` runs).

Every command that builds a model takes ``--preset NAME``, ``--config FILE`` (repeatable)
and ``--set key.path=value`` (repeatable), resolved in that order.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from commands import curate, demo, evaluate, generate, info, train, weights
from pipeline.config.loader import ConfigError
from pipeline.models.errors import WeightsError

# Each module adds its subcommands; this order is the order of ``i2vgen --help``.
SUBCOMMANDS = (info, curate, train, weights, generate, demo, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (WeightsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
