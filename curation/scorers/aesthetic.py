"""Aesthetic scores on a ~1..10 scale: the LAION predictor when its weights are local, a
weight-free image-quality score otherwise, so a run without downloads still ranks its clips."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import cv2
import numpy as np

if TYPE_CHECKING:
    from curation.scorers.laion import ClipAestheticScorer


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

    def scores_and_embeddings(self, frames: np.ndarray) -> tuple[np.ndarray, None]:
        """The scores, and no embeddings: the two scorers answer the same call, and a row
        scored without CLIP weights stores a null ``clip_embedding``."""
        return self(frames), None

    def _score(self, rgb: np.ndarray) -> float:
        h, w = rgb.shape[:2]
        scale = self.work_short_side / min(h, w)
        rgb = np.ascontiguousarray(rgb)
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        sharpness = min(1.0, float(np.log10(1.0 + cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))[1][0, 0] ** 2)) / 3.0)
        clipped = float(np.count_nonzero((grey <= 2) | (grey >= 253))) / grey.size
        exposure = max(0.0, 1.0 - 2.0 * abs(float(grey.mean()) / 255.0 - 0.5) - clipped)
        r, g, b = cv2.split(rgb.astype(np.float32))
        (rg_mean, rg_std), (yb_mean, yb_std) = (np.ravel(cv2.meanStdDev(c)) for c in (r - g, 0.5 * (r + g) - b))
        hasler = np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean)
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
        from curation.scorers.laion import ClipAestheticScorer

        return ClipAestheticScorer(head_weights, clip_weights, device, arch=arch)
    if head_weights or clip_weights:
        missing = "curation.scoring.aesthetic_clip (CLIP ViT-L/14 weights)" if head_weights else (
            "curation.scoring.aesthetic_head (LAION head weights)"
        )
        raise ValueError(f"the LAION aesthetic scorer needs both weight files; missing {missing}")
    return QualityScorer()
