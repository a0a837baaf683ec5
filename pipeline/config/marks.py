"""The config keys that define the model, the training objective or the stored encodings.

The schema marks each such field with ``schema.defining``; the checks that compare two
configs (an exported stage file against its reader's, a resumed run against its first, an
encoded table against its trainer's) read the marks here, so they all compare the keys the
schema names rather than lists of their own.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Collection, Iterator, Mapping

from pipeline.config.schema import DEFINES, RUN_ONLY, Config, Kind, StagesConfig


def defining_keys(config: Config, kinds: Kind | Collection[Kind], stage: str, for_export: bool = False) -> dict[str, Any]:
    """The dotted keys marked with any of ``kinds``, in schema order, with their values in
    ``config``; of the per-stage sections only ``stages.<stage>``. ``for_export``: without
    the run-only keys, which an exported stage file is not checked against."""
    wanted = {kinds} if isinstance(kinds, str) else set(kinds)
    return {key: value for key, value, marks in _leaves(config, "", stage)
            if wanted & marks.get(DEFINES, set()) and not (for_export and marks.get(RUN_ONLY))}


def _leaves(node: Any, prefix: str, stage: str) -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
    for spec in fields(node):
        if isinstance(node, StagesConfig) and spec.name != stage:
            continue
        value = getattr(node, spec.name)
        if is_dataclass(value):
            yield from _leaves(value, f"{prefix}{spec.name}.", stage)
        else:
            yield f"{prefix}{spec.name}", value, spec.metadata


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict (a run's YAML, a stage file's metadata) as dotted keys, the form
    ``defining_keys`` gives."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
