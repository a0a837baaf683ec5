"""The ``i2vgen`` command line; ``python -m pipeline`` is the same (what ``ray job submit`` runs).

Every command that builds a model takes ``--preset NAME``, ``--config FILE`` (repeatable)
and ``--set key.path=value`` (repeatable), resolved in that order.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence


from pipeline.config.loader import ConfigError, config_to_yaml, load_config, preset_names
from pipeline.models.errors import WeightsError


def _add_config_args(
    parser: argparse.ArgumentParser, preset_positional: bool = False, default_preset: str = "tiny"
) -> None:
    if preset_positional:
        parser.add_argument("preset", choices=preset_names(), help="named preset")
    else:
        parser.add_argument("--preset", default=default_preset, choices=preset_names(), help="named preset")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file merged over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. unet.head_dim=32")


def _config_from(args: argparse.Namespace):
    return load_config(args.preset, args.config, args.set)


def cmd_config_show(args: argparse.Namespace) -> int:
    print(config_to_yaml(_config_from(args)), end="")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from pipeline.model_info import format_info, stage_info

    config = _config_from(args)
    stages = ["base", "refiner"] if args.stage == "all" else [args.stage]
    infos = [stage_info(config, s) for s in stages]
    if args.json:
        print(json.dumps([asdict(i) | {"trainable": i.trainable} for i in infos], indent=2))
    else:
        print(f"preset {config.preset}")
        print(format_info(infos))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    if args.inputs[0] == "report":
        return _curate_report(args)
    if not args.out:
        raise SystemExit("i2vgen curate: --out DIR is required")
    from curation.job import curate

    overrides = args.set + (["curation.follow_symlinks=true"] if args.follow_symlinks else [])
    summary = curate(args.inputs, args.out, load_config(args.preset, args.config, overrides), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _curate_report(args: argparse.Namespace) -> int:
    if len(args.inputs) != 2:
        raise SystemExit("usage: i2vgen curate report DIR")
    from curation.report import write_report

    print(write_report(args.inputs[1], _config_from(args)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.job import TrainingStopped, train
    from training.manifest import CheckpointRefused

    overrides = list(args.set)
    for flag, key in (("workers", "workers"), ("zero_stage", "zero_stage"), ("max_steps", "max_steps"),
                      ("checkpoint_every", "checkpoint_every")):
        if getattr(args, flag) is not None:
            overrides.append(f"train.{key}={getattr(args, flag)}")
    for flag in ("where", "val_where"):
        if getattr(args, flag):
            overrides.append(f"train.{flag}={json.dumps(getattr(args, flag))}")
    config = load_config(args.preset, args.config, overrides)
    try:
        summary = train(config, args.stage, args.data, args.run, args.init, args.allow_config_change)
    except (TrainingStopped, CheckpointRefused) as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from training.encode import check_stages, encode

    summaries = encode(args.data, _config_from(args), check_stages(args.stage), args.overwrite, not args.quiet)
    print(json.dumps(summaries, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.job import export

    print(export(args.run_dir, args.out, args.diffusers))
    return 0


def cmd_weights_check(args: argparse.Namespace) -> int:
    from pipeline.models.weights_check import LAYOUTS, check_folder, format_report

    if args.layout is not None and args.layout not in LAYOUTS:
        raise SystemExit(f"i2vgen weights check: --layout must be one of {sorted(LAYOUTS)}")
    layout, reports = check_folder(args.dir, _config_from(args), args.layout)
    print(format_report(args.dir, layout, reports))
    return 0 if all(r.status in ("ok", "present") for r in reports) else 1


def cmd_weights_import(args: argparse.Namespace) -> int:
    """Public weights -> our stage file (and optionally a diffusers folder), so generate and
    serve run them like a trained export."""
    from pipeline.models.build import build_denoiser
    from pipeline.models.diffusers_folder import save_diffusers_folder
    from pipeline.models.init_weights import initialise
    from pipeline.models.stage_file import save_stage

    config = _config_from(args)
    model = build_denoiser(config, args.stage)
    print(initialise(model, args.source, source=args.source))
    print(save_stage(model.state_dict(), args.out, args.stage, config, step=0))
    if args.diffusers:
        print(save_diffusers_folder(model, config, args.stage, args.diffusers))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generation.cascade import Cascade
    from pipeline.generation.request import ImageError, RequestError, TooLargeError, decode_image, make_request
    from pipeline.generation.video_files import write_outputs

    config = _config_from(args)
    data = Path(args.image).read_bytes()
    try:
        pixels = decode_image(data, config.serving, max_bytes=len(data))  # a local file: any size on disk
        request = make_request(config, pixels, args.prompt, args.frames, args.fps, args.steps, args.guidance,
                               args.sampler, args.seed, args.tr)
    except (ImageError, TooLargeError) as err:
        raise ConfigError(f"--image {args.image}: {err}") from err
    except RequestError as err:
        raise ConfigError(f"--{err.field.replace('refine_from', 'tr')}: {err.message}") from err
    cascade = Cascade.from_files(config, args.base, args.refiner, device=args.device)
    (video,) = cascade.generate([request], on_step=_step_printer())
    for path in write_outputs(video, request.fps, args.out, args.gif, args.sheet, config.serving.crf):
        print(path)
    return 0


def _step_printer():
    """One progress line per stage, rewritten in place."""
    def on_step(stage: str, rows: list[int], done: int, total: int) -> None:
        print(f"\r{stage}: step {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return on_step


def cmd_serve(args: argparse.Namespace) -> int:
    from inference.serving.app import run_locally

    run_locally(args.base, args.refiner, args.preset, args.config, args.set, args.host, args.port)
    return 0


def cmd_eval(args: argparse.Namespace, usage_error: Callable[[str], NoReturn]) -> int:
    """``i2vgen eval``: a stage measured on held-out clips, or two such runs compared."""
    if args.compare:
        return _eval_compare(args, usage_error)
    for flag in ("base", "data", "out"):
        if not getattr(args, flag):
            usage_error(f"the following arguments are required: --{flag} (or --compare A.json B.json)")
    from evaluation.run import run_eval

    config = _config_from(args)
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


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from demo.run import budget_from, run_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_demo(args.out, budget_from(args.budget))
    print(json.dumps({"index": str(Path(args.out) / "index.html"), "means": summary["means"],
                      "trained_is_better": summary["trained_is_better"], "timings_s": summary["timings_s"]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a resolved config as YAML")
    _add_config_args(show, preset_positional=True)
    show.set_defaults(func=cmd_config_show)

    info = sub.add_parser("model-info", help="parameter counts per part and FLOPs per forward")
    _add_config_args(info, preset_positional=True)
    info.add_argument("--stage", choices=["base", "refiner", "all"], default="all")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_model_info)

    curate = sub.add_parser(
        "curate",
        help="curate videos and images into Lance tables (or: curate report DIR)",
        description="i2vgen curate INPUT... --out DIR | i2vgen curate report DIR",
    )
    curate.add_argument("inputs", nargs="+", help="files, folders, globs, manifests (CSV/JSONL/Parquet); or 'report DIR'")
    curate.add_argument("--out", help="output folder for clips.lance, images.lance, rejects.lance")
    curate.add_argument("--quiet", action="store_true", help="no progress bar")
    curate.add_argument("--follow-symlinks", action="store_true",
                        help="follow links to folders in folder scans and ** globs (curation.follow_symlinks)")
    _add_config_args(curate, default_preset="paper")  # buckets for the paper's frame sizes
    curate.set_defaults(func=cmd_curate)

    train = sub.add_parser("train", help="train the base or refiner with Ray Train + DeepSpeed")
    train.add_argument("--stage", required=True, choices=["base", "refiner"])
    train.add_argument("--data", required=True, help="a curated folder (clips.lance, images.lance)")
    train.add_argument("--run", required=True, help="run folder; the same folder resumes")
    train.add_argument("--workers", type=int)
    train.add_argument("--zero-stage", dest="zero_stage", type=int, choices=[0, 1, 2, 3])
    train.add_argument("--max-steps", dest="max_steps", type=int)
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument(
        "--init",
        help="start from an export (the refiner starts from the base), SD 2.1 (a diffusers folder or an original "
        "single file: the spatial layers) or, with model.arch=release, the released I2VGen-XL (VGen's .pth or "
        "the diffusers folder)",
    )
    train.add_argument("--where", help='SQL filter on the tables, e.g. "aesthetic > 6 AND motion > 0.2"')
    train.add_argument(
        "--allow-config-change", dest="allow_config_change", action="store_true",
        help="resume a run although its model or objective keys differ from its config.yaml (refused otherwise)",
    )
    train.add_argument(
        "--val-where", dest="val_where",
        help="SQL choosing the validation rows, which training never draws (default: split = 'val', where the "
        "tables have curation's split column)",
    )
    _add_config_args(train)
    train.set_defaults(func=cmd_train)

    encode = sub.add_parser(
        "encode", help="store VAE latents and CLIP features of the curated tables, so trainers skip the encoders"
    )
    encode.add_argument("data", help="a curated folder (clips.lance, images.lance)")
    encode.add_argument("--stage", action="append", choices=["base", "refiner"], help="repeatable; default both")
    encode.add_argument("--overwrite", action="store_true", help="re-encode a table made with other encoder settings")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(encode)
    encode.set_defaults(func=cmd_encode)

    export = sub.add_parser("export", help="write a run's EMA weights as one safetensors file")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True)
    export.add_argument("--diffusers", metavar="DIR", help="also write a diffusers-style folder (unet/, scheduler/)")
    export.set_defaults(func=cmd_export)

    weights = sub.add_parser("weights", help="public weights: check a folder, import into a stage file")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    check = weights_sub.add_parser("check", help="which expected files DIR holds and whether they fit the preset")
    check.add_argument("dir")
    check.add_argument("--layout", help="the layout to check against (default: detect; a wrong name lists them)")
    _add_config_args(check, default_preset="paper")
    check.set_defaults(func=cmd_weights_check)
    imp = weights_sub.add_parser(
        "import", help="SD 2.1 or the released I2VGen-XL -> a stage file that generate and serve load"
    )
    imp.add_argument("source", help="a diffusers folder or an original single-file checkpoint")
    imp.add_argument("--out", required=True, help="the stage file to write (.safetensors)")
    imp.add_argument("--stage", default="base", choices=["base", "refiner"])
    imp.add_argument("--diffusers", metavar="DIR", help="also write a diffusers-style folder")
    _add_config_args(imp, default_preset="release")  # SD 2.1 goes into the paper's UNet: --preset paper
    imp.set_defaults(func=cmd_weights_import)

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
    generate.add_argument("--tr", type=int, help="the step the refiner re-noises to (the paper's 600)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    generate.add_argument("--out", required=True, help="the mp4 to write")
    generate.add_argument("--gif", help="also write a GIF here")
    generate.add_argument("--sheet", help="also write a contact-sheet PNG here")
    _add_config_args(generate)
    generate.set_defaults(func=cmd_generate)

    serve = sub.add_parser("serve", help="run the Ray Serve endpoint locally (Ctrl-C stops it)")
    serve.add_argument("--base", required=True)
    serve.add_argument("--refiner")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _add_config_args(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the whole system on a generated corpus, ending in DIR/index.html")
    demo.add_argument("--out", required=True, help="the demo's folder; rerunning with it resumes")
    demo.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                      help="change the demo's budget, e.g. base_steps=300 (keys: demo.run.DemoBudget)")
    demo.set_defaults(func=cmd_demo)

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
    _add_config_args(evaluate)
    evaluate.set_defaults(func=partial(cmd_eval, usage_error=evaluate.error))
    eval_sub = evaluate.add_subparsers(dest="eval_command")
    spectrum = eval_sub.add_parser("spectrum", help="spatial and temporal spectra, base vs refined (paper Fig. 7)")
    spectrum.add_argument("base_video")
    spectrum.add_argument("refined_video")
    spectrum.add_argument("--out", required=True, help="folder for spectrum.json and spectrum.png")
    spectrum.set_defaults(func=cmd_eval_spectrum)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (WeightsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
