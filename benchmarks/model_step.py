"""Forward+backward time and peak memory of one base-stage training step.

    python benchmarks/model_step.py                 # CPU: tiny and small, checkpointing off/on
    python benchmarks/model_step.py --paper         # GPU: also paper at 448x256x16 in bf16, batch 1 and 4

With ``--paper`` it also times the frozen encoders a raw-media trainer runs per sample
(the SD VAE over the 16 frames and CLIP ViT-H over the first, in fp32 as training runs
them): that is the work ``i2vgen encode`` moves off the trainers, so (step + encoders) /
step is the compute side of the raw-against-pre-encoded ratio.

Each case runs in its own process, so peak memory (RSS on CPU, allocator peak on GPU) is
that case's alone. A step is the real objective (``training.losses.diffusion_loss``) plus
backward and an AdamW update, or the trainers' DeepSpeed engine (``engine="deepspeed"``).
Writes ``benchmarks/results/model_step.json`` (``model_step_cuda.json`` on a GPU) and one
line per case. On a GPU the figure to push up is achieved TFLOP/s: the config's FLOPs for
forward+backward (3x the forward, counted on the meta device) divided by the step time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/training.py would shadow the ``training`` package this script imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "model_step.json"


def run_case(preset: str, overrides: list[str], device: str, dtype: str, batch: int, steps: int,
             encoders: bool = False, engine: str = "torch") -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.diffusion.noise_schedule import NoiseSchedule
    from pipeline.model_info import forward_flops, latent_shape
    from pipeline.models.build import build_denoiser
    from training.losses import diffusion_loss

    config = load_config(preset, overrides=overrides)
    if encoders:
        return time_encoders(config, preset, device, batch, steps)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    flops = forward_flops(build_denoiser(config, "base", device="meta"), config, "base") * batch
    model = build_denoiser(config, "base", device=device).train()
    if engine == "deepspeed":
        model, update = deepspeed_engine(model, config, bf16=dtype == "bf16", cuda=device.startswith("cuda"))
    else:
        model = model.to(torch_dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=8e-5)

        def update(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    noise_schedule = NoiseSchedule(config.diffusion)
    shape = latent_shape(config, "base", batch)
    latents = torch.randn(shape, device=device, dtype=torch_dtype)
    width = config.unet.cross_attention_dim
    features = {"image_embeds": torch.randn(batch, 1, width, device=device),
                "text": torch.randn(batch, 77, width, device=device)}  # what the stage reads of them
    conditioning = getattr(model, "module", model).conditioning
    null_text = torch.randn(1, 77, width, device=device) if conditioning.null_prompt else None
    data = conditioning.batch(latents, features, torch.full((batch,), 8, device=device), torch_dtype, null_text)
    cuda = device.startswith("cuda")

    def step() -> None:
        loss, _ = diffusion_loss(model, noise_schedule, data, config)
        update(loss)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = timed_runs(step, steps, cuda)
    seconds = statistics.median(times)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {
        "preset": preset,
        "overrides": overrides,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "dtype": dtype,
        "engine": engine,
        "latent_shape": list(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": seconds,
        "step_seconds_all": times,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": "allocator peak" if cuda else "RSS growth over the built model",
        "train_step_tflop": 3 * flops / 1e12,
        "achieved_tflops": 3 * flops / seconds / 1e12,
    }


def timed_runs(run, repeats: int, cuda: bool) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``run`` after one warm-up call (which allocates
    optimizer state and caches), waiting for the GPU each time; the GPU's peak-memory counter
    restarts after the warm-up."""
    import torch

    def synchronised() -> None:
        run()
        if cuda:
            torch.cuda.synchronize()

    synchronised()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synchronised()
        times.append(time.perf_counter() - start)
    return times


def deepspeed_engine(model, config, bf16: bool, cuda: bool):
    """The trainers' own engine as one process of world size 1: ``training.loop``'s DeepSpeed
    config (ZeRO stage, bf16 with fp32 master weights, clipping) and ``build_optimizer``'s
    AdamW with its per-group rates. Returns the engine and the update it runs on a loss."""
    import os

    import deepspeed

    from training.loop import deepspeed_config
    from training.optim import build_optimizer

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    optimizer, lr_scheduler = build_optimizer(model, config.train, fused=cuda and config.train.fused_adamw)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=deepspeed_config(config.train, bf16))

    def update(loss) -> None:
        engine.backward(loss)
        engine.step()

    return engine, update


def time_encoders(config, preset: str, device: str, batch: int, steps: int) -> dict:
    """Seconds per batch of the frozen encoders as a trainer runs them (``Conditioning.encode``)
    on decoded base-stage pixels (fp32, no autocast), and the allocator's peak."""
    import torch

    from pipeline.model_info import latent_shape
    from pipeline.models.build import build_autoencoder, build_clip, build_denoiser

    conditioning = build_denoiser(config, "base", device="meta").conditioning
    clip = build_clip(config.clip, device=device)
    vae = build_autoencoder(config.vae, device=device).to(device)
    _, _, frames, h, w = latent_shape(config, "base", batch)
    f = config.vae.factor
    pixels = torch.rand(batch, 3, frames, h * f, w * f, device=device) * 2 - 1
    cuda = device.startswith("cuda")

    def encode() -> None:
        with torch.no_grad():
            conditioning.encode(clip, vae, pixels, [""] * batch)

    times = timed_runs(encode, steps, cuda)
    return {
        "preset": preset,
        "overrides": ["encoders"],
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "dtype": "fp32",
        "pixel_shape": list(pixels.shape),
        "encoder_seconds": statistics.median(times),
        "encoder_seconds_all": times,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


CPU_CASES = [
    ("tiny", [], 2, 5),
    ("tiny", ["unet.gradient_checkpointing=true"], 2, 5),
    ("small", [], 1, 2),
    ("small", ["unet.gradient_checkpointing=true"], 1, 2),
]


def pre_encoded_ratios(results: list[dict]) -> list[dict]:
    """(step + encoders) / step for the paper base at each batch, with and without
    checkpointing: how much faster a trainer steps when it reads stored latents, counting
    compute only (decoding, which the Ray Data workers do, is left out on both sides)."""
    encoders = {r["pixel_shape"][0]: r["encoder_seconds"] for r in results if "encoder_seconds" in r}
    ratios = []
    for r in results:
        batch = r.get("latent_shape", [None])[0]
        if r.get("preset") != "paper" or "step_seconds" not in r or batch not in encoders:
            continue
        ratio = (r["step_seconds"] + encoders[batch]) / r["step_seconds"]
        ratios.append({"batch": batch, "overrides": r["overrides"], "engine": r.get("engine", "torch"),
                       "step_seconds": r["step_seconds"], "encoder_seconds": encoders[batch], "ratio": ratio})
        print(f"pre-encoded speed-up, batch {batch} {' '.join(r['overrides'])} {ratios[-1]['engine']} "
              f"(compute only): "
              f"({r['step_seconds']:.3f} + {encoders[batch]:.3f}) / {r['step_seconds']:.3f} = {ratio:.2f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="add paper at 448x256x16 in bf16 (needs a GPU)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case as JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [dict(preset=p, overrides=o, device=device, dtype="fp32", batch=b, steps=s) for p, o, b, s in CPU_CASES]
    if device == "cuda":
        cases = [dict(c, dtype="bf16", steps=5) for c in cases]
        if args.paper:
            for batch in (1, 4):  # batch 4 fills an 80 GB card without checkpointing
                for ckpt in ("false", "true"):
                    cases.append(dict(preset="paper", overrides=[f"unet.gradient_checkpointing={ckpt}"],
                                      device=device, dtype="bf16", batch=batch, steps=5))
                cases.append(dict(preset="paper", overrides=[], device=device, dtype="fp32", batch=batch, steps=5,
                                  encoders=True))
                # The trainers' DeepSpeed engine (ZeRO-2, fp32 master weights) with checkpointing, as training
                # runs, then with the fused AdamW kernel, and with the reduction overlapped as well.
                for engine_settings in ([], ["train.fused_adamw=true"],
                                        ["train.fused_adamw=true", "train.overlap_comm=true"]):
                    cases.append(dict(preset="paper", overrides=["unet.gradient_checkpointing=true", *engine_settings],
                                      device=device, dtype="bf16", batch=batch, steps=5, engine="deepspeed"))
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({**case, "error": proc.stderr.strip().splitlines()[-1]})
            print(f"{case['preset']} {case['overrides']}: failed: {results[-1]['error']}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        if case.get("encoders"):
            print(f"{r['preset']:<6} frozen encoders (VAE + CLIP, fp32) on {r['pixel_shape']}: "
                  f"{r['encoder_seconds']:.3f} s/batch, peak {r['peak_memory_mb']:.0f} MB")
            continue
        print(
            f"{r['preset']:<6} {' '.join(r['overrides']) or 'default':<34} {r['dtype']} {r['engine']} "
            f"latent {r['latent_shape']}: "
            f"{r['step_seconds']:.3f} s/step, peak {r['peak_memory_mb']:.0f} MB, {r['achieved_tflops']:.3f} TFLOP/s"
        )
    out = RESULTS if device == "cpu" else RESULTS.with_name(f"model_step_{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(
        {"device": device, "torch": torch.__version__, "cases": results, "pre_encoded": pre_encoded_ratios(results)},
        indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
