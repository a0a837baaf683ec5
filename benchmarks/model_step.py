"""Forward+backward time and peak memory of one base-stage training step.

    python benchmarks/model_step.py                 # CPU: tiny and small, checkpointing off/on
    python benchmarks/model_step.py --paper         # GPU: also paper at 448x256x16 in bf16

Each case runs in its own process, so peak memory (RSS on CPU, allocator peak on GPU) is
that case's alone. A step is the real objective (``training.losses.diffusion_loss``) plus
backward and an AdamW update. Writes ``benchmarks/results/model_step.json`` and one line
per case. On a GPU the figure to push up is achieved TFLOP/s: the config's FLOPs for
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

RESULTS = Path(__file__).parent / "results" / "model_step.json"


def run_case(preset: str, overrides: list[str], device: str, dtype: str, batch: int, steps: int) -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.diffusion.schedule import NoiseSchedule
    from pipeline.model_info import forward_flops, latent_shape
    from pipeline.models.build import build_denoiser
    from training.losses import DiffusionBatch, diffusion_loss

    config = load_config(preset, overrides=overrides)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    flops = forward_flops(build_denoiser(config, "base", device="meta"), config, "base") * batch
    model = build_denoiser(config, "base", device=device).to(torch_dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-5)
    schedule = NoiseSchedule(config.diffusion)
    shape = latent_shape(config, "base", batch)
    latents = torch.randn(shape, device=device, dtype=torch_dtype)
    data = DiffusionBatch(
        latents=latents,
        context=torch.randn(batch, 1, config.unet.cross_attention_dim, device=device, dtype=torch_dtype),
        fps=torch.full((batch,), 8, device=device),
        image_latent=latents[:, :, 0],
    )
    cuda = device.startswith("cuda")

    def step() -> None:
        loss, _ = diffusion_loss(model, schedule, data, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up: allocates optimizer state and caches
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
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
        "latent_shape": list(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": seconds,
        "step_seconds_all": times,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": "allocator peak" if cuda else "RSS growth over the built model",
        "train_step_tflop": 3 * flops / 1e12,
        "achieved_tflops": 3 * flops / seconds / 1e12,
    }


CPU_CASES = [
    ("tiny", [], 2, 5),
    ("tiny", ["unet.gradient_checkpointing=true"], 2, 5),
    ("small", [], 1, 2),
    ("small", ["unet.gradient_checkpointing=true"], 1, 2),
]


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
            for ckpt in ("false", "true"):
                cases.append(dict(preset="paper", overrides=[f"unet.gradient_checkpointing={ckpt}"],
                                  device=device, dtype="bf16", batch=1, steps=5))
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({**case, "error": proc.stderr.strip().splitlines()[-1]})
            print(f"{case['preset']} {case['overrides']}: failed: {results[-1]['error']}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['preset']:<6} {' '.join(r['overrides']) or 'default':<34} {r['dtype']} latent {r['latent_shape']}: "
            f"{r['step_seconds']:.3f} s/step, peak {r['peak_memory_mb']:.0f} MB, {r['achieved_tflops']:.3f} TFLOP/s"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": device, "torch": torch.__version__, "cases": results}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
