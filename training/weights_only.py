"""DeepSpeed shards read without running pickled code.

DeepSpeed 0.19's ``load_checkpoint`` has no option for it: its ``TorchCheckpointEngine.load``
calls ``torch.load(weights_only=False)``, and every shard a resume reads (model states, ZeRO
optimizer partitions) goes through that method. This engine loads with
``weights_only=True`` instead, admitting by name the only classes other than tensors and
builtins that DeepSpeed's checkpoints hold.
"""

from __future__ import annotations

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

# What torch.serialization.get_unsafe_globals_in_checkpoint finds in DeepSpeed 0.19.8's
# checkpoints under ZeRO 0, 1, 2 and 3, fp32 and bf16: the ZeRO optimizer states' loss
# scaler, stage enum and fragment addresses. Rebuilding one only sets plain attributes.
DEEPSPEED_STATE_CLASSES = (LossScaler, ZeroStageEnum, fragment_address)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``; saving is
    unchanged."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(list(DEEPSPEED_STATE_CLASSES)):
            return torch.load(path, map_location=map_location, weights_only=True)


def load_weights_only(engine) -> None:
    """Make ``engine`` read its checkpoints through ``WeightsOnlyCheckpointEngine``. Any
    other engine (Nebula, the fast or decoupled writers) is refused, not silently swapped
    for one that writes differently."""
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise RuntimeError(f"checkpoint engine {type(engine.checkpoint_engine).__name__}: resumes read shards only "
                           "through DeepSpeed's TorchCheckpointEngine, with weights_only=True; remove the "
                           "DeepSpeed 'checkpoint' writer settings")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
