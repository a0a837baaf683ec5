"""``i2vgen eval``: a trained stage measured on held-out clips, two such runs compared, or
the base and refined videos' spectra."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Callable, NoReturn

from commands.options import add_config_args, config_from


def cmd_eval(args: argparse.Namespace, usage_error: Callable[[str], NoReturn]) -> int:
    """``i2vgen eval``: a stage measured on held-out clips, or two such runs compared."""
    if args.compare:
        return _eval_compare(args, usage_error)
    for flag in ("base", "data", "out"):
        if not getattr(args, flag):
            usage_error(f"the following arguments are required: --{flag} (or --compare A.json B.json)")
    from evaluation.run import run_eval

    config = config_from(args)
    steps = config.sampling.steps if args.steps is None else args.steps
    result = run_eval(config, args.base, args.refiner, args.data, args.where, args.clips, args.seed, steps, args.out,
                      device=args.device)
    print(json.dumps({k: v for k, v in result.items() if k not in ("clips", "settings")}, indent=2))
    print(Path(args.out) / "index.html")
    return 0


def _eval_compare(args: argparse.Namespace, usage_error: Callable[[str], NoReturn]) -> int:
    from evaluation.compare import compare, format_comparison

    given = [flag for flag in ("base", "refiner", "data") if getattr(args, flag)]
    if given:
        usage_error(f"--compare reads two eval.json files; it takes no --{given[0]}")
    result = compare(*args.compare)
    print(format_comparison(result))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compare.json").write_text(json.dumps(result, indent=2))
    return 0


def cmd_eval_spectrum(args: argparse.Namespace) -> int:
    from inference.spectrum import compare_spectra

    print(json.dumps(compare_spectra(args.base_video, args.refined_video, args.out), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # --where and --steps choose the held-out clips and the sampling of this measurement
    # (run_eval's arguments), not train.where or a config key: not in options.CONFIG_FLAGS.
    evaluate = sub.add_parser(
        "eval",
        help="measure a trained stage on held-out clips (or: eval --compare A.json B.json; eval spectrum ...)",
        description="i2vgen eval --base FILE [--refiner FILE] --data DIR --out DIR | "
        "i2vgen eval --compare A.json B.json [--out DIR] | i2vgen eval spectrum BASE.mp4 REFINED.mp4 --out DIR",
    )
    evaluate.add_argument("--base", help="the base stage's export (.safetensors)")
    evaluate.add_argument("--refiner", help="the refiner's export: the refined video is what is measured")
    evaluate.add_argument("--data", help="a curated folder (clips.lance)")
    evaluate.add_argument("--where", default="split = 'val'", help="SQL choosing the held-out clips (default: %(default)s)")
    evaluate.add_argument("--clips", type=int, default=4, help="how many held-out clips (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="clip i is generated with seed + i")
    evaluate.add_argument("--steps", type=int, help="base sampling steps (default: sampling.steps)")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    evaluate.add_argument("--out", help="folder for eval.json, index.html and the clips' media (with --compare: compare.json)")
    evaluate.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                          help="paired differences B - A per metric with 95%% bootstrap intervals")
    add_config_args(evaluate)
    evaluate.set_defaults(func=partial(cmd_eval, usage_error=evaluate.error))
    eval_sub = evaluate.add_subparsers(dest="eval_command")
    spectrum = eval_sub.add_parser("spectrum", help="spatial and temporal spectra, base vs refined (paper Fig. 7)")
    spectrum.add_argument("base_video")
    spectrum.add_argument("refined_video")
    spectrum.add_argument("--out", required=True, help="folder for spectrum.json and spectrum.png")
    spectrum.set_defaults(func=cmd_eval_spectrum)
