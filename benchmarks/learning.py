"""Which recipe makes the tiny base learn within a CPU budget? Recipes side by side.

    python benchmarks/learning.py                                   # the recipes below, 200 steps each
    python benchmarks/learning.py --steps 300 --recipe "lr2e-3=train.lr=0.002"

Each recipe is a set of ``--set`` overrides on the ``tiny`` preset. The base is trained in
one process (plain torch AdamW with the trainers' parameter groups, loss and EMA; no Ray or
DeepSpeed, which ``make demo`` covers) on single-shot generated clips (pans, moving shapes,
static shots, textures; 8 seeds each), then its EMA weights and its own step-0 weights
animate the first frames of held-out clips (seeds the training clips never use) through
the cascade's base, scored with ``evaluation.metrics``. Recipes take turns on the same
cores, so their figures compare within one run. Writes ``benchmarks/results/learning.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/curation.py and training.py share their names with packages this script imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "learning.json"
TRAIN_KINDS = ("pan", "moving_shape", "static", "texture")
HELDOUT = (("pan", 9001), ("moving_shape", 9002), ("pan", 9003), ("moving_shape", 9004))
# The recipes the README's "Learning on a laptop" compares: the preset, and one lever off.
RECIPES = {
    "tiny": [],
    "v-prediction": ["diffusion.prediction=v"],
    "no image concat": ["model.image_concat=false"],
}


def _clips(folder: Path) -> tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]:
    """Training clips (whole, at the source size) and held-out ones, written once."""
    import decord

    from support.synthetic import ShotSpec, write_video

    def read(kind: str, seed: int) -> np.ndarray:
        path = folder / f"{kind}_{seed}.mp4"
        if not path.exists():
            write_video(path, [ShotSpec(kind, 48, seed=seed)], fps=24)
        reader = decord.VideoReader(str(path))
        return reader.get_batch(list(range(len(reader)))).asnumpy()

    train = [read(kind, seed) for kind in TRAIN_KINDS for seed in range(8)]
    return train, [(kind, read(kind, seed)) for kind, seed in HELDOUT]


def run_recipe(name: str, overrides: list[str], steps: int, folder: Path) -> dict:
    from evaluation.metrics import continuation_psnr, first_frame_psnr, freeze_frame_psnr, motion_agreement
    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import make_request
    from pipeline.config import load_config
    from pipeline.diffusion.noise_schedule import NoiseSchedule
    from pipeline.frames import centre_crop_box, crop_resize
    from pipeline.models.build import build_autoencoder, build_clip, build_denoiser
    from training.losses import diffusion_loss
    from training.optim import EMA, build_optimizer

    config = load_config("tiny", overrides=overrides)
    stage = config.stages.base
    size, frames, stride = (stage.width, stage.height), stage.frames, 24 // config.sampling.fps
    train, heldout = _clips(folder)

    def prepare(video: np.ndarray) -> np.ndarray:
        return crop_resize(video, centre_crop_box(video.shape[2], video.shape[1], *size), size)

    torch.manual_seed(0)
    model, clip, vae = build_denoiser(config, "base"), build_clip(config.clip), build_autoencoder(config.vae)
    noise_schedule, (optimizer, rates) = NoiseSchedule(config.diffusion), build_optimizer(model, config.train)
    ema = EMA(model, config.train.ema_decay, zero3=False)
    step0 = {k: v.clone() for k, v in ema.state_dict(model).items()}
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(1)
    weights = np.array(config.train.frame_weights) / sum(config.train.frame_weights)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        count = int(rng.choice(config.train.frame_counts, p=weights))
        videos = []
        for _ in range(config.train.micro_batch):  # one worker's micro-batch (the demo's 2 workers: twice this)
            video = train[rng.integers(len(train))]
            first = int(rng.integers(0, len(video) - stride * (frames - 1)))
            videos.append(prepare(video[first : first + stride * frames : stride][:count]))
        pixels = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        with torch.no_grad():
            batch = model.conditioning.batch(*model.conditioning.encode(clip, vae, pixels, [""] * len(videos)),
                                             torch.full((len(videos),), 8), torch.float32)
        loss, _ = diffusion_loss(model, noise_schedule, batch, config, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        rates.step()
        ema.update(model, step)
        losses.append(loss.item())
    seconds = time.perf_counter() - start

    def score(state: dict[str, torch.Tensor]) -> dict[str, float]:
        denoiser = build_denoiser(config, "base")
        denoiser.load_state_dict(state)
        requests = [make_request(config, video[0], frames=frames, steps=config.sampling.steps, seed=100 + i)
                    for i, (_, video) in enumerate(heldout)]
        generated = Cascade(config, denoiser, None).run_base(requests)
        rows = []
        for (kind, video), out in zip(heldout, generated):
            real = prepare(video[: stride * frames : stride])
            rows.append({"kind": kind, "first_frame_psnr": first_frame_psnr(out, real[0]),
                         "continuation_psnr": continuation_psnr(out, real),
                         "freeze_frame_psnr": freeze_frame_psnr(real[0], real),
                         "motion_agreement": motion_agreement(out, real)})
        keys = [k for k in rows[0] if k != "kind"]
        means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        means |= {f"pans_{k}": float(np.mean([r[k] for r in rows if r["kind"] == "pan"])) for k in keys}
        return means

    return {"recipe": name, "overrides": overrides, "steps": steps, "train_s": round(seconds, 1),
            "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:])),
            "trained": score(ema.state_dict(model)), "step0": score(step0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--recipe", action="append", default=[],
                        help="NAME=key=value[,key=value...]; repeatable; default: the README's recipes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipes = dict(RECIPES)
    if args.recipe:
        recipes = {r.partition("=")[0]: [o for o in r.partition("=")[2].split(",") if o] for r in args.recipe}
    folder = Path(tempfile.mkdtemp(prefix="i2vgen-learning-"))
    results = []
    for name, overrides in recipes.items():
        results.append(run_recipe(name, overrides, args.steps, folder))
        print(json.dumps(results[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
