"""Our models against diffusers' on the same weights: speed and memory side by side.

    python benchmarks/parity.py                      # UNets tiny, small; release tiny, mid (~4 min, 2 cores)
    python benchmarks/parity.py --presets tiny --release tiny
    python benchmarks/parity.py --presets tiny --repeats 5 --device cuda

1. UNet: for each preset, our ``UNet3D(config.unet)`` (built without the FPS embedding, so
   both take the same inputs) against diffusers' ``UNet3DConditionModel`` built with the
   same architecture (the mapping ``tests/test_models.py`` checks) and every weight copied
   from ours by name after giving ours small random values everywhere (so the zero-started
   temporal layers take part). Their outputs must agree to 1e-4 (eval mode) before anything
   is timed. A step is forward + backward of ``output.square().mean()`` in train mode (both
   have the temporal convolutions' dropout), batch 1, 8 frames, fp32, one context token,
   at the stage's base latent size (``small``: 32x56, about 13 s a step on 2 CPU cores).
   Peak memory is that of one step, grads included: tensor bytes alive at the peak above
   those alive before the step. On CUDA that is ``torch.cuda.max_memory_allocated``; on
   CPU the same quantity counted from ``torch.profiler``'s allocation events
   (``profile_memory=True``), in a separate, untimed step. It counts torch tensors only:
   not RSS, allocator fragmentation or oneDNN's scratch space.
2. Release: ``Cascade.base_latents`` against ``I2VGenXLPipeline(output_type="latent")``
   with the tiny components of ``tests/test_release_parity.py`` (same weights, image,
   prompt, seed, DDIM settings, guidance 9), at two step counts: the per-step time is the
   slope between them and the fixed cost (text, image and VAE encoding) its intercept.
   The max |difference| of the two latents is reported at both step counts. Cases: ``tiny``
   (the test's) and ``mid`` (a wider UNet, 10.8M parameters; see ``RELEASE_CASES``).

Noise from other processes is shared out evenly: after one warm-up each, the repetitions
of the two implementations alternate (ABBA order) and medians are reported, with the
ratio ours/diffusers. Writes ``benchmarks/results/parity.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keeps torch.profiler's start-up messages out of the table

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import UNet3DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' mapping and tiny components
from pipeline.generation.request import GenerationRequest  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.models.unet3d import UNet3D  # noqa: E402
from tests.reference_models import diffusers_unet_kwargs, randomise, release_reference, sample_image  # noqa: E402

diffusers.utils.logging.set_verbosity_error()  # the table is the output: no progress bars or notices
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

RESULTS = Path(__file__).parent / "results" / "parity.json"
FRAMES = 8
TOLERANCE = 1e-4
# Release-architecture cases: overrides of the tiny_release preset. "mid": three levels of
# 64/128/128 channels (tiny: 32/64) and 32-wide heads at the same latent size.
RELEASE_CASES: dict[str, list[str]] = {
    "tiny": [],
    "mid": [
        "unet.block_out_channels=[64,128,128]", "unet.attention_levels=[true,true,false]", "unet.head_dim=32",
    ],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each function, ``repeats`` times, in ABBA order so neither always goes
    first, and what each returned last."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, Any] = {}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(reversed(fns))):
            _sync(device)
            start = time.perf_counter()
            last[name] = fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times, last


def peak_memory_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak MiB of tensors alive during ``step()`` above those alive before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # The raw event list: prof.events() folds allocations into the ops that made them.
    memory = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in memory:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def compare_unet(preset: str, repeats: int, device: torch.device) -> dict[str, Any]:
    """Our UNet3D against diffusers' UNet3DConditionModel holding the same weights."""
    config = load_config(preset)
    unet_config = dataclasses.replace(config.unet, use_fps_embedding=False)
    ours = UNet3D(unet_config)
    randomise(ours, seed=0)
    reference = UNet3DConditionModel(**diffusers_unet_kwargs(config, 3))
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours, reference = ours.to(device), reference.to(device)

    stage, factor = config.stages.base, config.vae.factor
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet_config.in_channels, FRAMES, stage.height // factor, stage.width // factor, generator=gen)
    x = x.to(device)
    context = torch.randn(1, 1, unet_config.cross_attention_dim, generator=gen).to(device)
    t = torch.tensor([500], device=device)
    models = {"ours": ours, "diffusers": reference}
    forward = {
        "ours": lambda: ours(x, t, context),
        "diffusers": lambda: reference(x, t, encoder_hidden_states=context).sample,
    }

    for model in models.values():
        model.eval()
    with torch.no_grad():
        out_ours, out_ref = forward["ours"](), forward["diffusers"]()
    max_diff = (out_ours - out_ref).abs().max().item()
    if not max_diff <= TOLERANCE:
        raise AssertionError(f"{preset}: outputs differ by {max_diff:.2e} (> {TOLERANCE}): not the same function")
    for model in models.values():
        model.train()

    def train_step(name: str) -> Callable[[], None]:
        def step() -> None:
            models[name].zero_grad(set_to_none=True)
            forward[name]().square().mean().backward()
        return step

    steps = {name: train_step(name) for name in models}
    for step in steps.values():  # warm-up
        step()
    memory = {}
    for name, step in steps.items():
        models[name].zero_grad(set_to_none=True)
        memory[name] = peak_memory_mib(step, device)
    times, _ = interleaved(steps, repeats, device)
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "preset": preset,
        "latent_shape": list(x.shape),
        "params": sum(p.numel() for p in ours.parameters()),
        "eval_max_abs_diff": max_diff,
        "eval_output_abs_max": out_ref.abs().max().item(),
        "step_seconds": seconds,
        "step_seconds_all": times,
        "time_ratio_ours_over_diffusers": seconds["ours"] / seconds["diffusers"],
        "peak_memory_mib": memory,
        "memory_ratio_ours_over_diffusers": memory["ours"] / memory["diffusers"],
    }


def compare_release(name: str, step_counts: tuple[int, int], repeats: int, device: torch.device) -> dict[str, Any]:
    """Our cascade's base stage against I2VGenXLPipeline: per-step time, fixed cost, latents."""
    with tempfile.TemporaryDirectory() as tmp:
        config, pipe, cascade = release_reference(Path(tmp), RELEASE_CASES[name], device)
        stage, image, guidance, prompt, seed = config.stages.base, sample_image(3), 9.0, "a fox runs", 1234

        def ours(steps: int) -> torch.Tensor:
            request = GenerationRequest(image=image, prompt=prompt, frames=stage.frames, fps=16, steps=steps,
                                        guidance=guidance, sampler="ddim", seed=seed, refine_from=600)
            return cascade.base_latents([request])

        def reference(steps: int) -> torch.Tensor:
            return pipe(
                prompt=prompt, image=Image.fromarray(image), height=stage.height, width=stage.width, target_fps=16,
                num_frames=stage.frames, num_inference_steps=steps, guidance_scale=guidance,
                negative_prompt=config.sampling.negative_prompt, generator=torch.Generator().manual_seed(seed),
                output_type="latent",
            ).frames

        ours(step_counts[0]), reference(step_counts[0])  # warm-up
        runs: dict[int, dict[str, Any]] = {}
        for steps in step_counts:
            times, latents = interleaved(
                {"ours": lambda: ours(steps), "diffusers": lambda: reference(steps)}, repeats, device
            )
            runs[steps] = {
                "seconds": {k: statistics.median(v) for k, v in times.items()},
                "seconds_all": times,
                "max_abs_diff": (latents["ours"] - latents["diffusers"]).abs().max().item(),
                "latent_abs_max": latents["diffusers"].abs().max().item(),
            }
        params = sum(p.numel() for p in cascade.base.parameters())
    low, high = step_counts
    per_step = {k: (runs[high]["seconds"][k] - runs[low]["seconds"][k]) / (high - low) for k in ("ours", "diffusers")}
    fixed = {k: runs[low]["seconds"][k] - low * per_step[k] for k in per_step}
    return {
        "case": name,
        "overrides": RELEASE_CASES[name],
        "latent_shape": [1, 4, stage.frames, stage.height // config.vae.factor, stage.width // config.vae.factor],
        "unet_params": params,
        "guidance": guidance,
        "by_steps": {str(k): v for k, v in runs.items()},
        "per_step_seconds": per_step,
        "per_step_ratio_ours_over_diffusers": per_step["ours"] / per_step["diffusers"],
        "fixed_seconds": fixed,
    }


def _print_unet(rows: list[dict[str, Any]], repeats: int) -> None:
    print(f"\nUNet forward+backward, batch 1, {FRAMES} frames, fp32, train mode; time: median of {repeats}")
    print(f"{'preset':<7}{'latent CxFxHxW':<16}{'params':>11}{'ours s':>9}{'diffusers s':>13}{'ratio':>7}"
          f"{'ours MiB':>10}{'diffusers MiB':>15}{'ratio':>7}{'max|ours-diffusers|':>21}")
    for r in rows:
        s, m = r["step_seconds"], r["peak_memory_mib"]
        shape = "x".join(map(str, r["latent_shape"][1:]))
        print(f"{r['preset']:<7}{shape:<16}{r['params']:>11,}{s['ours']:>9.3f}{s['diffusers']:>13.3f}"
              f"{r['time_ratio_ours_over_diffusers']:>7.2f}{m['ours']:>10.1f}{m['diffusers']:>15.1f}"
              f"{r['memory_ratio_ours_over_diffusers']:>7.2f}{r['eval_max_abs_diff']:>21.1e}")


def _print_release(rows: list[dict[str, Any]], step_counts: tuple[int, int], repeats: int) -> None:
    low, high = step_counts
    print(f"\nrelease: Cascade.base_latents vs I2VGenXLPipeline, 1 video, DDIM, guidance 9; median of {repeats}")
    print(f"{'case':<6}{'latent CxFxHxW':<16}{'UNet params':>12}{'steps':>7}{'ours s':>9}{'diffusers s':>13}"
          f"{'ratio':>7}{'max|ours-diffusers|':>21}")
    for r in rows:
        label = f"{r['case']:<6}{'x'.join(map(str, r['latent_shape'][1:])):<16}{r['unet_params']:>12,}"
        for steps in (low, high):
            run = r["by_steps"][str(steps)]
            s = run["seconds"]
            print(f"{label}{steps:>7}{s['ours']:>9.3f}{s['diffusers']:>13.3f}"
                  f"{s['ours'] / s['diffusers']:>7.2f}{run['max_abs_diff']:>21.1e}")
        p, f = r["per_step_seconds"], r["fixed_seconds"]
        ratio = r["per_step_ratio_ours_over_diffusers"]
        print(f"{label}{'/step':>7}{p['ours']:>9.3f}{p['diffusers']:>13.3f}{ratio:>7.2f}")
        print(f"{label}{'fixed':>7}{f['ours']:>9.3f}{f['diffusers']:>13.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small", help="UNet comparison presets, comma-separated")
    parser.add_argument("--release", default=",".join(RELEASE_CASES),
                        help=f"release cases, comma-separated, of {list(RELEASE_CASES)} ('' for none)")
    parser.add_argument("--steps", default="4,12", help="the two sampling step counts of the release comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per implementation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    low, high = (int(s) for s in args.steps.split(","))
    load_before, started = os.getloadavg()[0], time.perf_counter()

    unet_rows = []
    for preset in filter(None, args.presets.split(",")):
        unet_rows.append(compare_unet(preset, args.repeats, device))
        r = unet_rows[-1]
        print(f"{preset}: latent {r['latent_shape']}, {r['step_seconds']['ours']:.3f} s (ours) vs "
              f"{r['step_seconds']['diffusers']:.3f} s (diffusers)", flush=True)
    release_rows = []
    for name in filter(None, args.release.split(",")):
        release_rows.append(compare_release(name, (low, high), args.repeats, device))
        print(f"release {name}: {release_rows[-1]['per_step_seconds']} s/step", flush=True)
    total = time.perf_counter() - started

    if unet_rows:
        _print_unet(unet_rows, args.repeats)
    if release_rows:
        _print_release(release_rows, (low, high), args.repeats)
    print(f"\ntotal {total:.0f} s")
    results = {
        "machine": {
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},  # other processes' share
        },
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "settings": {
            "repeats": args.repeats, "order": "warm-up, then ABBA-interleaved repetitions; medians",
            "unet": {"batch": 1, "frames": FRAMES, "dtype": "fp32", "context_tokens": 1, "mode": "train",
                     "loss": "output.square().mean()", "use_fps_embedding": False, "tolerance": TOLERANCE},
            "peak_memory": ("torch.cuda.max_memory_allocated above the allocated bytes before the step"
                            if device.type == "cuda" else
                            "torch.profiler allocation events: peak live tensor bytes above those before the step"),
            "release": {"step_counts": [low, high], "sampler": "ddim", "guidance": 9.0, "batch": 1},
        },
        "date": time.strftime("%Y-%m-%d"),
        "total_seconds": total,
        "unet": unet_rows,
        "release": release_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
