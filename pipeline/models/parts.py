"""Which part of the model a parameter belongs to.

The paper updates the SD 2.1 spatial layers at gamma = 0.2 times the rate of the temporal
layers and the new modules; ``model-info`` reports sizes per part. Both read this one map.
"""

from __future__ import annotations

from typing import Literal

Part = Literal["spatial", "temporal", "embedding", "global_encoder"]

# Module names that exist only in the video model (absent from SD 2.1's 2D UNet).
TEMPORAL_MODULES = ("temp_convs", "temp_attentions", "transformer_in")
# The released model's condition branches (diffusers' I2VGenXLUNet names), also new.
EMBEDDING_MODULES = (
    "fps_embedding", "context_embedding", "image_latents_proj_in", "image_latents_temporal_encoder",
    "image_latents_context_embedding",
)


def parameter_part(name: str) -> Part:
    """Classify a parameter name of a ``StageDenoiser`` (or of a bare ``UNet3D``)."""
    if name.startswith("global_encoder."):
        return "global_encoder"
    parts = name.split(".")
    if any(p in TEMPORAL_MODULES for p in parts):
        return "temporal"
    if any(p in EMBEDDING_MODULES for p in parts):
        return "embedding"
    return "spatial"
