"""``i2vgen generate`` (image -> video in this process) and ``i2vgen serve`` (the Ray Serve
endpoint, locally)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from commands.options import DeprecatedFlag, add_config_args, config_from
from pipeline.config.loader import ConfigError


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import ImageError, RequestError, TooLargeError, decode_image, make_request
    from pipeline.generation.video_files import write_outputs

    config = config_from(args)
    data = Path(args.image).read_bytes()
    try:
        pixels = decode_image(data, config.serving, max_bytes=len(data))  # a local file: any size on disk
        request = make_request(config, pixels, args.prompt, args.frames, args.fps, args.steps, args.guidance,
                               args.sampler, args.seed, args.refine_from)
    except (ImageError, TooLargeError) as err:
        raise ConfigError(f"--image {args.image}: {err}") from err
    except RequestError as err:
        raise ConfigError(f"--{err.field.replace('_', '-')}: {err.message}") from err
    cascade = Cascade.from_files(config, args.base, args.refiner, device=args.device)
    (video,) = cascade.generate([request], on_step=_step_printer())
    for path in write_outputs(video, request.fps, args.out, args.gif, args.sheet, config.serving.crf):
        print(path)
    return 0


def _step_printer() -> Callable[[str, list[int], int, int], None]:
    """One progress line per stage, rewritten in place."""
    def on_step(stage: str, rows: list[int], done: int, total: int) -> None:
        print(f"\r{stage}: step {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return on_step


def cmd_serve(args: argparse.Namespace) -> int:
    from inference.serving.app import run_locally

    run_locally(args.base, args.refiner, args.preset, args.config, args.set, args.host, args.port)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # The sampling flags are fields of the one request (bounded by serving.*, as over HTTP),
    # not config overrides, so they are not in options.CONFIG_FLAGS.
    generate = sub.add_parser("generate", help="image (+ text) -> video through the cascade")
    generate.add_argument("--image", required=True, help="the first frame (any format Pillow reads)")
    generate.add_argument("--prompt", help="a short text (the refiner's condition; the release base's too)")
    generate.add_argument("--base", required=True, help="the base stage's export (.safetensors)")
    generate.add_argument("--refiner", help="the refiner's export; without it, the base video alone")
    generate.add_argument("--sampler", choices=["ddim", "dpm++"])
    generate.add_argument("--steps", type=int, help="base sampling steps (the refiner takes its share of T_r)")
    generate.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    generate.add_argument("--frames", type=int)
    generate.add_argument("--fps", type=int)
    generate.add_argument("--refine-from", dest="refine_from", type=int,
                          help="T_r: the step the refiner re-noises to (the paper's 600; default: sampling.refine_from)")
    generate.add_argument("--tr", dest="refine_from", type=int, action=DeprecatedFlag, use="--refine-from",
                          help=argparse.SUPPRESS)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    generate.add_argument("--out", required=True, help="the mp4 to write")
    generate.add_argument("--gif", help="also write a GIF here")
    generate.add_argument("--sheet", help="also write a contact-sheet PNG here")
    add_config_args(generate)
    generate.set_defaults(func=cmd_generate)

    serve = sub.add_parser("serve", help="run the Ray Serve endpoint locally (Ctrl-C stops it)")
    serve.add_argument("--base", required=True)
    serve.add_argument("--refiner")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    add_config_args(serve)
    serve.set_defaults(func=cmd_serve)
