"""Aesthetic scores on a ~1..10 scale: the LAION predictor when its weights are local, a
weight-free image-quality score otherwise, so a run without downloads still ranks its clips."""

from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.weights import load_into, read_state_dict

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

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> ``(N,)`` float32 scores, in batches of ``batch_size``."""
        scores = [self._score_batch(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)

    def _score_batch(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
        # Bicubic with antialiasing, as CLIP's own PIL preprocessing does when shrinking.
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        embedding = F.normalize(self.visual((x - self.mean) / self.std), dim=-1)
        return self.head(embedding).float().cpu().numpy()


class QualityScorer:
    """Weight-free image quality on 1..10, for runs without the LAION weights.

    score = 1 + 9 * (sharpness + exposure + colourfulness) / 3, each cue in 0..1, computed on
    the frame shrunk to a 256 px short side (never enlarged) so that the cues do not depend
    on the input resolution:

    - sharpness = min(1, log10(1 + var(Laplacian(grey))) / 3): log because the variance
      spans decades; 1000 (fine crisp detail) reaches 1, the test's sharp frame (~190) gets
      0.76 and its sigma-3 Gaussian blur (~4) 0.23;
    - exposure = max(0, 1 - 2 * |mean luminance - 0.5| - share of clipped pixels), with
      luminance in 0..1 and clipped meaning grey <= 2 or >= 253: dark, washed-out and
      blown-out frames lose it;
    - colourfulness = min(1, M / 100), M Hasler & Suesstrunk's (2003) metric
      sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), rg = R - G,
      yb = (R + G) / 2 - B; their scale puts "highly colourful" at ~82, grey at 0.

    It ranks frames by technical quality, not taste; thresholds on it are corpus-relative
    and do not transfer to the LAION scale although both span 1..10.
    """

    work_short_side = 256

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 RGB -> ``(N,)`` float32 scores in [1, 10]."""
        return np.array([self._score(frame) for frame in frames], dtype=np.float32)

    def _score(self, rgb: np.ndarray) -> float:
        h, w = rgb.shape[:2]
        scale = self.work_short_side / min(h, w)
        rgb = np.ascontiguousarray(rgb)
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        sharpness = min(1.0, float(np.log10(1.0 + cv2.Laplacian(grey, cv2.CV_64F).var())) / 3.0)
        clipped = float(((grey <= 2) | (grey >= 253)).mean())
        exposure = max(0.0, 1.0 - 2.0 * abs(float(grey.mean()) / 255.0 - 0.5) - clipped)
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        hasler = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        colourfulness = min(1.0, float(hasler) / 100.0)
        return 1.0 + 9.0 * (sharpness + exposure + colourfulness) / 3.0


def build_aesthetic_scorer(
    head_weights: str | None,
    clip_weights: str | None,
    device: str = "cpu",
    arch: str | Mapping[str, Any] = "ViT-L-14",
) -> ClipAestheticScorer | QualityScorer:
    """The LAION scorer when both weight files are given, the quality score when neither is.

    One without the other is a configuration mistake, not a request for the fallback:
    silently switching scales would make ``min_aesthetic`` mean something else.
    """
    if head_weights and clip_weights:
        return ClipAestheticScorer(head_weights, clip_weights, device, arch=arch)
    if head_weights or clip_weights:
        missing = "curation.scoring.aesthetic_clip (CLIP ViT-L/14 weights)" if head_weights else (
            "curation.scoring.aesthetic_head (LAION head weights)"
        )
        raise ValueError(f"the LAION aesthetic scorer needs both weight files; missing {missing}")
    return QualityScorer()
