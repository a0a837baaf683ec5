"""The LAION aesthetic head's model definition, in the core because two layers need it:
curation scores frames with it (``curation.scorers.laion``) and ``i2vgen weights check``
fits a downloaded head file against its shapes (``pipeline.models.weights_check``)."""

from __future__ import annotations

import torch
from torch import nn

LAION_EMBED_DIM = 768  # CLIP ViT-L/14's image embedding, what the released head was fit on


class LaionAestheticHead(nn.Module):
    """LAION's "improved aesthetic predictor" (``sac+logos+ava1-l14-linearMSE.pth``).

    Module names match the released file so it loads as is. Upstream commented its ReLUs
    out, so the whole head is one affine map of the L2-normalised CLIP ViT-L/14 image
    embedding; the dropouts only mattered in training.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(LAION_EMBED_DIM, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(N, 768)`` normalised embeddings -> ``(N,)`` scores."""
        return self.layers(embedding).squeeze(-1)
