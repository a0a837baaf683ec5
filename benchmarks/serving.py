"""Serving throughput with and without batching, a load-and-chaos soak, and DPM-Solver++
against DDIM.

    python benchmarks/serving.py                       # CPU, tiny preset, untrained stages
    python benchmarks/serving.py --base B --refiner R  # your exports
    python benchmarks/serving.py --soak                # only the soak
    python benchmarks/serving.py --latency paper       # GPU: one paper video, per stage

1. Load: the Serve app on 127.0.0.1, ``POST /v1/generate`` from 1, 4 and 8 concurrent
   clients; requests/s and p50/p95 latency with batching on (``max_batch_size`` 8) and off
   (1), side by side in one run, and their ratio.
2. Samplers: the whole cascade with DPM-Solver++ at 20 steps and DDIM at 50 on the same
   seeds: the time ratio and the mean absolute difference of the videos (0-255), beside
   DDIM 50 against DDIM 100 as the scale of "converged".
3. ``--soak``: 200 requests at concurrency 8, of which 20% are bad inputs and 10% come
   from clients that hang up early: p50/p95 of the good ones, every outcome counted, the
   pending jobs left afterwards (must be 0), and the Serve replicas' memory before and after.
4. ``--latency PRESET``: seconds per video of the base and of the refiner for one request
   at the preset's sizes (random weights: the work is the same).

Writes ``benchmarks/results/serving.json`` (``serving_soak.json`` for ``--soak`` alone).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "serving.json"
LEVELS = (1, 4, 8)


def _image_bytes() -> bytes:
    y, x = np.mgrid[0:256, 0:448]
    image = np.stack([x * 255 // 447, y * 255 // 255, (x // 32 + y // 32) % 2 * 200], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load(url: str, image: bytes, concurrency: int, count: int, steps: int) -> dict[str, float]:
    def one(seed: int) -> float:
        start = time.perf_counter()
        answer = requests.post(url + "/v1/generate", files={"image": ("in.png", image)},
                               data={"seed": str(seed), "steps": str(steps)}, timeout=3600)
        answer.raise_for_status()
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency, "requests": count, "requests_per_s": count / wall,
        "p50_s": statistics.median(latencies), "p95_s": latencies[min(count - 1, round(0.95 * (count - 1)))],
    }


def _start_app(preset: str, base: str, refiner: str, results: str, overrides: list[str]) -> str:
    """The app on a fresh port of 127.0.0.1; its URL."""
    from ray import serve

    from inference.serving.app import compose
    from pipeline.config import load_config
    from pipeline.ray_runtime import init_ray

    init_ray()
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = load_config(preset, overrides=[*overrides, f"serving.results_dir={results}"])
    serve.run(compose(config, base, refiner), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def serving_load(preset: str, base: str, refiner: str, per_level: int, steps: int, results: str) -> dict[str, Any]:
    from ray import serve

    image, out = _image_bytes(), {}
    for label, size in (("batching", 8), ("no_batching", 1)):
        overrides = [f"serving.{s}.{k}={v}" for s in ("base", "refiner")
                     for k, v in (("max_batch_size", size), ("max_ongoing_requests", 16), ("batch_wait_timeout_s", 0.05))]
        url = _start_app(preset, base, refiner, f"{results}/{label}", overrides)
        _load(url, image, 1, 1, steps)  # warm-up
        out[label] = [_load(url, image, c, max(per_level, 2 * c), steps) for c in LEVELS]
        for row in out[label]:
            print(f"{label:<12} c={row['concurrency']}: {row['requests_per_s']:.3f} req/s, "
                  f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s", flush=True)
        serve.shutdown()
    out["throughput_ratio"] = {
        str(c): on["requests_per_s"] / off["requests_per_s"] for c, on, off in zip(LEVELS, out["batching"], out["no_batching"])
    }
    print("batching on/off, requests/s:", {k: round(v, 2) for k, v in out["throughput_ratio"].items()})
    return out


def _replica_memory_mb() -> dict[str, float]:
    """Resident memory of each Serve replica process of the app (``ray::ServeReplica:bench:*``)."""
    import psutil

    out: dict[str, float] = {}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if "ServeReplica:bench:" in title and process.info["memory_info"] is not None:
            name = title.split("ServeReplica:bench:")[1].split()[0]
            out[name] = out.get(name, 0.0) + process.info["memory_info"].rss / 2**20
    return out


# The soak's bad inputs: each must get its 4xx, and cost the server nothing.
BAD_INPUTS = (
    ("not an image", b"this is not an image", {}),
    ("too many pixels", "big", {}),
    ("frames out of range", "ok", {"frames": "1000"}),
    ("unknown sampler", "ok", {"sampler": "euler"}),
    ("guidance below 1", "ok", {"guidance": "-3"}),
)


def soak(preset: str, base: str, refiner: str, results: str, requests_total: int, concurrency: int,
         steps: int) -> dict[str, Any]:
    """``--soak``: mixed traffic against one app; see the module's docstring."""
    import random

    from ray import serve

    url = _start_app(preset, base, refiner, results, ["serving.max_pending_jobs=16", "serving.max_image_pixels=1000000"])
    image = _image_bytes()
    big = io.BytesIO()
    Image.fromarray(np.zeros((1100, 1000, 3), np.uint8)).save(big, format="PNG")
    bodies = {"ok": image, "big": big.getvalue()}
    good = {"frames": "4", "steps": str(steps)}
    requests.post(url + "/v1/generate", files={"image": ("in.png", image)}, data=good, timeout=600)  # warm-up
    memory_before = _replica_memory_mb()
    plan = ["bad"] * (requests_total // 5) + ["hang up"] * (requests_total // 10)
    plan += ["good"] * (requests_total - len(plan))
    random.Random(0).shuffle(plan)

    def one(i: int) -> tuple[str, str, float]:
        kind, start = plan[i], time.perf_counter()
        if kind == "bad":
            label, body, fields = BAD_INPUTS[i % len(BAD_INPUTS)]
            answer = requests.post(url + "/v1/generate", files={"image": ("in.png", bodies.get(body, body))},
                                   data={**good, **fields}, timeout=600)
            return f"bad: {label}", str(answer.status_code), time.perf_counter() - start
        try:
            answer = requests.post(url + "/v1/generate", files={"image": ("in.png", image)},
                                   data={**good, "seed": str(i)}, timeout=(30, 0.5 if kind == "hang up" else 600))
        except requests.exceptions.ReadTimeout:
            return kind, "hung up", time.perf_counter() - start
        return kind, str(answer.status_code), time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - start
    deadline = time.time() + 300
    while (pending := requests.get(url + "/healthz", timeout=30).json()["pending_jobs"]) and time.time() < deadline:
        time.sleep(1)
    stats = requests.get(url + "/v1/stats", timeout=30).json()
    memory_after = _replica_memory_mb()
    serve.shutdown()
    counts: dict[str, dict[str, int]] = {}
    for kind, status, _ in outcomes:
        counts.setdefault(kind, {}).setdefault(status, 0)
        counts[kind][status] += 1
    latencies = sorted(s for kind, status, s in outcomes if kind == "good" and status == "200")
    out = {
        "requests": requests_total, "concurrency": concurrency, "steps": steps, "wall_s": wall,
        "outcomes": counts, "pending_after": pending, "job_outcomes": stats["outcomes"],
        "good_p50_s": statistics.median(latencies) if latencies else None,
        "good_p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] if latencies else None,
        "replica_rss_mb_before": memory_before, "replica_rss_mb_after": memory_after,
    }
    print(f"soak: {requests_total} requests in {wall:.0f} s; outcomes {counts}; pending afterwards {pending}")
    print(f"soak: good requests p50 {out['good_p50_s']:.2f} s, p95 {out['good_p95_s']:.2f} s")
    print(f"soak: replica RSS (MB) before {_rounded(memory_before)}, after {_rounded(memory_after)}")
    return out


def _rounded(values: dict[str, float]) -> dict[str, int]:
    return {k: round(v) for k, v in sorted(values.items())}


def sampler_comparison(preset: str, base: str, refiner: str, seeds: int) -> dict[str, Any]:
    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import make_request
    from pipeline.config import load_config

    config = load_config(preset)
    cascade = Cascade.from_files(config, base, refiner)
    pixels = np.asarray(Image.open(io.BytesIO(_image_bytes())).convert("RGB"))

    def run(sampler: str, steps: int) -> tuple[float, np.ndarray]:
        requests_ = [make_request(config, pixels, prompt="a chequered board", sampler=sampler, steps=steps, seed=s)
                     for s in range(seeds)]
        start = time.perf_counter()
        videos = cascade.generate(requests_)
        return time.perf_counter() - start, np.stack(videos).astype(np.float32)

    ddim_s, ddim = run("ddim", 50)
    dpm_s, dpm = run("dpm++", 20)
    _, ddim_fine = run("ddim", 100)
    out = {
        "seeds": seeds, "ddim50_s": ddim_s, "dpmpp20_s": dpm_s, "time_ratio_ddim50_over_dpmpp20": ddim_s / dpm_s,
        "mean_abs_diff_dpmpp20_vs_ddim50": float(np.abs(dpm - ddim).mean()),
        "mean_abs_diff_ddim50_vs_ddim100": float(np.abs(ddim - ddim_fine).mean()),
    }
    print(f"DDIM 50: {ddim_s:.1f} s, DPM-Solver++ 20: {dpm_s:.1f} s ({out['time_ratio_ddim50_over_dpmpp20']:.2f}x); "
          f"mean |dpm++20 - ddim50| {out['mean_abs_diff_dpmpp20_vs_ddim50']:.2f}, "
          f"|ddim50 - ddim100| {out['mean_abs_diff_ddim50_vs_ddim100']:.2f} (of 255)")
    return out


def stage_latency(preset: str, device: str) -> dict[str, Any]:
    import torch

    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import make_request
    from pipeline.config import load_config
    from pipeline.models.build import build_denoiser

    config = load_config(preset)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cascade = Cascade(config, build_denoiser(config, "base"), build_denoiser(config, "refiner"), device, dtype)
    pixels = np.asarray(Image.open(io.BytesIO(_image_bytes())).convert("RGB"))
    request = make_request(config, pixels, prompt="a chequered board")

    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    base_s, (video,) = timed(lambda: cascade.run_base([request]))
    refiner_s, _ = timed(lambda: cascade.run_refiner([video], [request]))
    out = {"preset": preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
           "dtype": str(dtype), "frames": request.frames, "steps": request.steps, "sampler": request.sampler,
           "base_s": base_s, "refiner_s": refiner_s}
    if device.startswith("cuda"):
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"{preset} on {out['device']}: base {base_s:.1f} s, refiner {refiner_s:.1f} s per video")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--base", help="base export (default: untrained stages of the preset)")
    parser.add_argument("--refiner")
    parser.add_argument("--per-level", type=int, default=8, help="requests per concurrency level (at least 2x it)")
    parser.add_argument("--steps", type=int, default=4, help="base steps of the load test's requests")
    parser.add_argument("--seeds", type=int, default=2, help="videos per sampler")
    parser.add_argument("--latency", metavar="PRESET", help="only time one video per stage of this preset")
    parser.add_argument("--soak", action="store_true", help="only the load-and-chaos soak")
    parser.add_argument("--soak-requests", type=int, default=200)
    parser.add_argument("--soak-steps", type=int, default=2, help="base steps of the soak's good requests")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    if args.latency:
        results["latency"] = stage_latency(args.latency, args.device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            base, refiner = args.base, args.refiner
            if base is None:
                from pipeline.config import load_config
                from pipeline.models.stage_file import save_untrained_stages

                paths = save_untrained_stages(tmp, load_config(args.preset))
                base, refiner = str(paths["base"]), str(paths["refiner"])
            results["preset"] = args.preset
            if not args.soak:
                results["load"] = serving_load(args.preset, base, refiner, args.per_level, args.steps, f"{tmp}/load")
            results["soak"] = soak(args.preset, base, refiner, f"{tmp}/soak", args.soak_requests, 8, args.soak_steps)
            if not args.soak:
                results["samplers"] = sampler_comparison(args.preset, base, refiner, args.seeds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    name = RESULTS.with_name(f"serving_latency_{args.latency}.json") if args.latency else RESULTS
    if args.soak:
        name = RESULTS.with_name("serving_soak.json")
    name.write_text(json.dumps(results, indent=2))
    print(f"wrote {name}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
