"""Aesthetic scores on a ~1..10 scale: the LAION predictor when its weights are local, a
weight-free image-quality score otherwise, so a default run still ranks its clips."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.weights import load_into, read_state_dict


class LaionAestheticHead(nn.Module):
    """LAION's "improved aesthetic predictor" (sac+logos+ava1-l14-linearMSE), with the
    released file's parameter names. Its ReLUs were commented out upstream, so it is an
    affine map of the L2-normalised CLIP ViT-L/14 image embedding."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


class ClipAestheticScorer:
    """CLIP image embedding -> LAION head, on the centre square of each frame."""

    def __init__(self, head_weights: str, clip_weights: str, device: str = "cpu", arch: str = "ViT-L-14") -> None:
        from pipeline.models.clip import clip_model_config

        self.device = device
        self.clip = open_clip.CLIP(**clip_model_config(arch))
        load_into(self.clip, read_state_dict(clip_weights), source=f"aesthetic CLIP weights ({clip_weights})")
        self.head = LaionAestheticHead(self.clip.visual.output_dim)
        load_into(self.head, read_state_dict(head_weights), source=f"aesthetic head weights ({head_weights})")
        self.clip.to(device).eval()
        self.head.to(device).eval()
        size = self.clip.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        embedding = F.normalize(self.clip.encode_image((x - self.mean) / self.std), dim=-1)
        return self.head(embedding).float().cpu().numpy()


class QualityScorer:
    """Weight-free image quality on 1..10: the mean of three 0..1 cues, times 9, plus 1.

    - sharpness: log10(1 + variance of the Laplacian of grey) / 3, capped at 1 (blur lowers it);
    - exposure: 1 - |mean luminance - 0.5| * 2, minus the share of clipped pixels (< 3 or
      > 252), floored at 0 (dark, washed-out or clipped frames lower it);
    - colourfulness: Hasler & Suesstrunk's metric / 100, capped at 1 (grey frames score 0).
    It ranks frames, it does not judge taste; thresholds on it are corpus-relative.
    """

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return np.array([self._score(f) for f in frames], dtype=np.float32)

    @staticmethod
    def _score(rgb: np.ndarray) -> float:
        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        sharpness = min(1.0, np.log10(1.0 + cv2.Laplacian(grey, cv2.CV_64F).var()) / 3.0)
        clipped = float(((grey < 3) | (grey > 252)).mean())
        exposure = max(0.0, 1.0 - abs(grey.mean() / 255.0 - 0.5) * 2.0 - clipped)
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        colour = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        colourfulness = min(1.0, colour / 100.0)
        return 1.0 + 9.0 * (sharpness + exposure + colourfulness) / 3.0


def build_aesthetic_scorer(head_weights: Optional[str], clip_weights: Optional[str], device: str = "cpu"):
    """The LAION scorer when both weight files are given, the quality score when neither is."""
    if head_weights and clip_weights:
        return ClipAestheticScorer(head_weights, clip_weights, device)
    if head_weights or clip_weights:
        missing = "curation.scoring.aesthetic_clip" if head_weights else "curation.scoring.aesthetic_head"
        raise ValueError(f"{missing}: both the aesthetic head and its CLIP weights are needed; this one is missing")
    return QualityScorer()
