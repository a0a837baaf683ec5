"""What the subcommands share: the config arguments, the flags that are config keys, and
old flag names that still work.

``CONFIG_FLAGS`` is the one table of flags that stand for a config key: it adds them to
their parsers and turns the given ones into ``--set`` overrides, so a flag and its key
cannot drift apart. Flags such as ``generate --steps`` or ``--refine-from`` are not in it:
they are fields of one generation request (bounded by ``serving``), not config overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from pipeline.config.loader import load_config, preset_names
from pipeline.config.schema import Config


@dataclass(frozen=True)
class ConfigFlag:
    """``--name VALUE`` on ``command`` is ``--set key=VALUE``; a ``bool`` flag is a switch
    that sets the key to true."""

    command: str
    name: str
    key: str
    type: type
    help: str
    choices: Optional[tuple[int, ...]] = None

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("curate", "--follow-symlinks", "curation.follow_symlinks", bool,
               "follow links to folders in folder scans and ** globs"),
    ConfigFlag("curate", "--recaption", "curation.captioning.recaption", bool,
               "caption every clip and image with curation.captioning.model, replacing the inputs' captions"),
    ConfigFlag("train", "--workers", "train.workers", int, "Ray Train workers"),
    ConfigFlag("train", "--zero-stage", "train.zero_stage", int, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3)),
    ConfigFlag("train", "--max-steps", "train.max_steps", int, "optimizer steps the run ends at"),
    ConfigFlag("train", "--checkpoint-every", "train.checkpoint_every", int, "steps between checkpoints"),
    ConfigFlag("train", "--where", "train.where", str, 'SQL filter on the tables, e.g. "aesthetic > 6 AND motion > 0.2"'),
    ConfigFlag("train", "--val-where", "train.val_where", str,
               "SQL choosing the validation rows, which training never draws (default: split = 'val', where the "
               "tables have curation's split column)"),
)


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The ``CONFIG_FLAGS`` rows of ``command``, each help naming its key."""
    for flag in CONFIG_FLAGS:
        if flag.command != command:
            continue
        help_text = f"{flag.help} ({flag.key})"
        if flag.type is bool:
            parser.add_argument(flag.name, dest=flag.dest, action="store_true", help=help_text)
        else:
            parser.add_argument(flag.name, dest=flag.dest, type=flag.type, choices=flag.choices, help=help_text)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """``key=value`` overrides for the ``CONFIG_FLAGS`` given on this command line. A flag
    left out (None), a switch left off and an empty string set nothing, so the preset,
    ``--config`` and ``--set`` decide."""
    overrides = []
    for flag in CONFIG_FLAGS:
        # Only the command's own rows: eval has a --where of its own, which is no train.where.
        value: Any = getattr(args, flag.dest, None) if args.command == flag.command else None
        if value is None or value is False or value == "":
            continue
        overrides.append(f"{flag.key}={json.dumps(value)}")  # JSON is YAML: a string stays one
    return overrides


def add_config_args(
    parser: argparse.ArgumentParser, preset_positional: bool = False, default_preset: str = "tiny"
) -> None:
    """``--preset`` (or a positional preset), ``--config FILE`` and ``--set KEY=VALUE``."""
    if preset_positional:
        parser.add_argument("preset", choices=preset_names(), help="named preset")
    else:
        parser.add_argument("--preset", default=default_preset, choices=preset_names(), help="named preset")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file merged over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. unet.head_dim=32")


def config_from(args: argparse.Namespace) -> Config:
    """The preset, then each ``--config``, then each ``--set``, then the config flags given."""
    return load_config(args.preset, args.config, [*args.set, *flag_overrides(args)])


class DeprecatedFlag(argparse.Action):
    """An old flag name that keeps working: it stores into the new flag's ``dest`` and says
    on stderr, in one line, which flag to use instead."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)
