"""The LAION aesthetic predictor: CLIP ViT-L/14 image embeddings and the LAION head
(``pipeline.models.aesthetic_head``), from local weight files. The embeddings also leave
with the scores (``scores_and_embeddings``): curation stores them for near-duplicates and
search. A module of its own so that the weight-free path (``aesthetic.py``) never imports
torch and open_clip: a curation worker without these weights starts in about a second
instead of ten."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from pipeline.models.aesthetic_head import LAION_EMBED_DIM, LaionAestheticHead
from pipeline.models.weights import load_into, read_state_dict


class ClipAestheticScorer:
    """CLIP ViT-L/14 image embedding of each frame's centre square -> LAION head.

    ``clip_weights`` must be OpenAI's ViT-L/14 in open_clip's state-dict layout (the head was
    fit on those embeddings; other ViT-L/14 weights load but score nonsense). OpenAI's CLIP
    uses QuickGELU, which open_clip's ``ViT-L-14`` config does not say, so the model is built
    with ``quick_gelu=True``: the weights would load either way, the embeddings would not
    match. ``arch`` is an open_clip config name or the config itself (tests pass a tiny one
    with a 768-d embedding).
    """

    def __init__(
        self,
        head_weights: str,
        clip_weights: str,
        device: str = "cpu",
        arch: str | Mapping[str, Any] = "ViT-L-14",
        batch_size: int = 32,
    ) -> None:
        config = open_clip.get_model_config(arch) if isinstance(arch, str) else dict(arch)
        if config is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        if config["embed_dim"] != LAION_EMBED_DIM:
            raise ValueError(
                f"the aesthetic head needs a {LAION_EMBED_DIM}-d CLIP embedding; {arch!r} has {config['embed_dim']}"
            )
        clip = open_clip.CLIP(**{**config, "quick_gelu": True})
        # The whole CLIP is loaded so a wrong file fails strictly; only its image tower is kept.
        load_into(clip, read_state_dict(clip_weights), source=f"aesthetic CLIP weights ({clip_weights})")
        self.visual = clip.visual.to(device).eval().requires_grad_(False)
        self.head = LaionAestheticHead()
        load_into(self.head, read_state_dict(head_weights), source=f"aesthetic head weights ({head_weights})")
        self.head.to(device).eval().requires_grad_(False)
        size = self.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
        self.device = device
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> ``(N,)`` float32 scores, in batches of ``batch_size``."""
        return self.scores_and_embeddings(frames)[0]

    @torch.no_grad()
    def scores_and_embeddings(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, H, W, 3)`` uint8 RGB -> ``(N,)`` float32 scores and the ``(N, 768)`` unit-length
        CLIP embeddings they were read from: one forward pass gives the aesthetic score and
        the descriptor that near-duplicates and search compare."""
        batches = [self._batch(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        if not batches:
            return np.zeros(0, np.float32), np.zeros((0, LAION_EMBED_DIM), np.float32)
        scores, embeddings = zip(*batches)
        return np.concatenate(scores).astype(np.float32), np.concatenate(embeddings).astype(np.float32)

    def _batch(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
        # Bicubic with antialiasing, as CLIP's own PIL preprocessing does when shrinking.
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        embedding = F.normalize(self.visual((x - self.mean) / self.std), dim=-1)
        return self.head(embedding).float().cpu().numpy(), embedding.float().cpu().numpy()
