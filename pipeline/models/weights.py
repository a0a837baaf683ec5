"""Safe loading of local weight files: safetensors first, torch files only as plain tensors.

Pickled checkpoints can run code when loaded; ``torch.load(weights_only=True)`` refuses
anything but tensors and containers, so a tampered file fails with a message, not a shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pipeline.models.errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt`` file.

    A torch checkpoint that wraps its tensors in ``state_dict`` (VGen, SD's ``.ckpt``) is
    unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError by version
        raise WeightsError(
            f"{path}: refused to load: it is not a plain tensor checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0]})"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a mapping of names to tensors")
    return dict(obj)


def fit_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` fails to fit a model whose state dict is ``own``: counts of missing,
    unexpected and misshapen keys, each with its first key named (empty when it fits)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} keys with the wrong shape, first {k!r}: "
            f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        )
    return problems


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` strictly; a mismatch names the first missing, unexpected or misshapen key."""
    problems = fit_problems(module.state_dict(), state)
    if problems:
        raise WeightsError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
