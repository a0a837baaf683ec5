"""What the refiner adds: spatial and temporal frequency content of base vs refined video.

The I2VGen-XL paper (arXiv 2311.04145, Fig. 7) argues that the refiner stage mainly adds
high-frequency detail, in space and in time, on top of the base stage's video. This module
measures that claim on a pair of rendered videos: amplitude spectra to plot, and the energy
in a low, a mid and a high band of normalised frequency, so a run can be checked by numbers
and not only by eye.

Usage::

    from inference.spectrum import compare_spectra
    report = compare_spectra("base.mp4", "refined.mp4", "out/")   # out/spectrum.{json,png}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Normalised frequency (1 = Nyquist). The last band includes its upper edge.
BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, 1.0)}
MIN_FRAMES = 4  # fewer leaves at most one non-DC temporal frequency: nothing to compare across bands
RADIAL_BINS = 64
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
# Frames (spatial) and rows (temporal) per step: bound the memory of 720p decoding and FFTs.
_CHUNK = 16
_ROWS = 64


@dataclass
class Spectrum:
    """A spectrum to plot (``freq``, ``amplitude``) and its energy per band."""

    freq: np.ndarray
    amplitude: np.ndarray
    energy: dict[str, float]


def open_video(path: str | Path) -> decord.VideoReader:
    """A decord reader for ``path``; a missing or undecodable file fails naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        return decord.VideoReader(str(path))
    except RuntimeError as err:  # decord reports every open failure as a bare RuntimeError
        raise ValueError(f"cannot read video {path}: {err}") from err


def read_gray(reader: decord.VideoReader, count: int) -> torch.Tensor:
    """``count`` evenly spaced frames as BT.601 luma in [0, 1], shape ``(count, H, W)``.

    Decoded in chunks so that 720p video never holds all its RGB frames at once.
    """
    indices = np.linspace(0, len(reader) - 1, count).round().astype(int).tolist()
    weights = torch.tensor(_LUMA, dtype=torch.float32) / 255.0
    chunks = [torch.from_numpy(reader.get_batch(indices[i:i + _CHUNK]).asnumpy()).float() @ weights
              for i in range(0, count, _CHUNK)]
    return torch.cat(chunks)


def resample(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(T, H, W)`` frames to ``size = (H, W)``, as the cascade does.

    Luma is linear in RGB, so resizing luma equals taking the luma of the resized RGB.
    """
    if tuple(frames.shape[1:]) == size:
        return frames
    return torch.cat([F.interpolate(frames[i:i + _CHUNK, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                      for i in range(0, len(frames), _CHUNK)])


def band_energies(freq: np.ndarray, power: np.ndarray) -> dict[str, float]:
    """Sum of ``power`` over the samples whose normalised ``freq`` falls in each band."""
    energies = {}
    for name, (lo, hi) in BANDS.items():
        upper = freq <= hi if hi >= 1.0 else freq < hi
        energies[name] = float(power[(freq >= lo) & upper].sum())
    return energies


def spatial_spectrum(frames: torch.Tensor, bins: int = RADIAL_BINS) -> Spectrum:
    """Radially averaged 2D amplitude spectrum of ``(T, H, W)`` frames, mean over frames.

    Each axis is normalised by its own Nyquist frequency, so a non-square frame still maps
    its highest representable frequency to 1 along both axes; corners (r > 1) are dropped.
    Band energies sum |F|^2 over the 2D coefficients themselves, not the radial profile,
    whose bins hold very different numbers of coefficients.
    """
    _, height, width = frames.shape
    window = torch.outer(torch.hann_window(height), torch.hann_window(width))
    amplitude = torch.zeros(height, width, dtype=torch.float64)
    power = torch.zeros(height, width, dtype=torch.float64)
    for i in range(0, len(frames), _CHUNK):
        chunk = frames[i:i + _CHUNK]
        chunk = (chunk - chunk.mean(dim=(1, 2), keepdim=True)) * window
        coeffs = torch.fft.fft2(chunk).abs()
        amplitude += coeffs.sum(0, dtype=torch.float64)
        power += coeffs.square().sum(0, dtype=torch.float64)
    amplitude, power = (amplitude / len(frames)).numpy(), (power / len(frames)).numpy()

    fy = np.fft.fftfreq(height) / 0.5
    fx = np.fft.fftfreq(width) / 0.5
    radius = np.hypot(fy[:, None], fx[None, :])
    inside = radius <= 1.0
    radius, amplitude, power = radius[inside], amplitude[inside], power[inside]

    index = np.minimum((radius * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):  # a bin no coefficient falls in (tiny frames) stays NaN
        profile = np.bincount(index, weights=amplitude, minlength=bins) / counts
    centres = (np.arange(bins) + 0.5) / bins
    return Spectrum(centres, profile, band_energies(radius, power))


def temporal_spectrum(frames: torch.Tensor) -> Spectrum:
    """Amplitude spectrum along time of ``(T, H, W)`` frames, averaged over pixels.

    The DC bin is dropped: after removing each pixel's temporal mean it only holds window
    leakage. Energy per band is each pixel's |F|^2 summed over the band, averaged over pixels.
    """
    count, height, _ = frames.shape
    if count < MIN_FRAMES:
        raise ValueError(f"a temporal spectrum needs at least {MIN_FRAMES} frames, got {count}")
    window = torch.hann_window(count)[:, None, None]
    amplitude = torch.zeros(count // 2 + 1, dtype=torch.float64)
    power = torch.zeros(count // 2 + 1, dtype=torch.float64)
    for row in range(0, height, _ROWS):
        block = frames[:, row:row + _ROWS]
        coeffs = torch.fft.rfft((block - block.mean(0, keepdim=True)) * window, dim=0).abs()
        amplitude += coeffs.sum(dim=(1, 2), dtype=torch.float64)
        power += coeffs.square().sum(dim=(1, 2), dtype=torch.float64)
    pixels = frames[0].numel()
    amplitude, power = (amplitude / pixels).numpy()[1:], (power / pixels).numpy()[1:]
    freq = np.fft.rfftfreq(count)[1:] / 0.5
    return Spectrum(freq, amplitude, band_energies(freq, power))


def _ratio(num: float, den: float) -> float | None:
    """``num / den``, or None (JSON null) where ``den`` is zero, e.g. a perfectly still video."""
    return num / den if den > 0 else None


def _summary(base: Spectrum, refined: Spectrum) -> dict:
    """Energy and share per band for both videos, and the refined/base ratio per band."""
    out = {}
    for name, spectrum in (("base", base), ("refined", refined)):
        total = sum(spectrum.energy.values())
        out[name] = {"energy": spectrum.energy,
                     "share": {band: _ratio(e, total) for band, e in spectrum.energy.items()}}
    out["ratio"] = {band: _ratio(refined.energy[band], base.energy[band]) for band in BANDS}
    return out


def plot(spatial: tuple[Spectrum, Spectrum], temporal: tuple[Spectrum, Spectrum], labels: tuple[str, str],
         path: Path) -> None:
    """Two panels, spatial and temporal: log amplitude of both videos, bands shaded."""
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine measures every tick label and doubles the time to save
    axes = fig.subplots(1, 2, gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.13, "top": 0.92, "wspace": 0.2})
    panels = ((axes[0], spatial, "spatial", "radial frequency (1 = Nyquist, 0.5 cycles/pixel)", None),
              (axes[1], temporal, "temporal", "frequency (1 = Nyquist, 0.5 cycles/frame)", "."))
    for ax, pair, title, xlabel, marker in panels:
        for (lo, hi), shade in zip(BANDS.values(), ("0.95", "0.88", "0.80")):
            ax.axvspan(lo, hi, color=shade, zorder=0)
        for name, (lo, hi) in BANDS.items():
            ax.text((lo + hi) / 2, 0.97, name, transform=ax.get_xaxis_transform(), ha="center", va="top")
        for spectrum, label in zip(pair, labels):
            ax.plot(spectrum.freq, spectrum.amplitude, marker=marker, label=label)
        ax.set(title=f"{title} spectrum", xlabel=xlabel, ylabel="mean amplitude |F|", yscale="log", xlim=(0, 1))
        ax.legend(loc="lower left")
    fig.savefig(path, dpi=110)


def compare_spectra(base_mp4: str | Path, refined_mp4: str | Path, out_dir: str | Path,
                    max_frames: int = 64) -> dict:
    """Compare the frequency content of the base stage's video and the refiner's video.

    The base video is first resampled to the refined video's size with bilinear
    interpolation (align_corners=False), which is what the cascade does to the base video
    before the refiner re-noises it; whatever the spectra differ by is then what the refiner
    added (or removed), not an artefact of the two resolutions.

    Both videos contribute the same number of evenly spaced frames: the shorter length,
    capped at ``max_frames``. Writes ``out_dir/spectrum.json`` (returned as a dict) and
    ``out_dir/spectrum.png``. A share or ratio whose denominator is zero (a perfectly still
    video has no temporal energy) is None, JSON null.
    """
    readers = open_video(base_mp4), open_video(refined_mp4)
    count = min(len(readers[0]), len(readers[1]), max_frames)
    if count < MIN_FRAMES:
        raise ValueError(f"need at least {MIN_FRAMES} frames from each video for a temporal spectrum; "
                         f"{base_mp4} has {len(readers[0])}, {refined_mp4} has {len(readers[1])}, "
                         f"max_frames={max_frames}")
    base, refined = (read_gray(reader, count) for reader in readers)
    base_size = [base.shape[2], base.shape[1]]
    base = resample(base, tuple(refined.shape[1:]))

    spatial = spatial_spectrum(base), spatial_spectrum(refined)
    temporal = temporal_spectrum(base), temporal_spectrum(refined)
    report = {
        "base": str(base_mp4),
        "refined": str(refined_mp4),
        "frames": count,
        "size": [refined.shape[2], refined.shape[1]],
        "base_size": base_size,
        "bands": {name: list(edges) for name, edges in BANDS.items()},
        "spatial": _summary(*spatial),
        "temporal": _summary(*temporal),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spectrum.json").write_text(json.dumps(report, indent=2) + "\n")
    resampled = ", resampled" if base_size != report["size"] else ""
    labels = (f"base ({base_size[0]}x{base_size[1]}{resampled})", f"refined ({report['size'][0]}x{report['size'][1]})")
    plot(spatial, temporal, labels, out_dir / "spectrum.png")
    return report
