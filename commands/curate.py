"""``i2vgen curate``: videos and images into the Lance training tables, and the report on
a curated folder."""

from __future__ import annotations

import argparse
import json

from commands.options import add_config_args, add_config_flags, config_from


def cmd_curate(args: argparse.Namespace) -> int:
    if args.inputs[0] == "report":
        return _curate_report(args)
    if args.inputs[0] == "search":
        return _curate_search(args)
    if not args.out:
        raise SystemExit("i2vgen curate: --out DIR is required")
    from curation.job import curate

    summary = curate(args.inputs, args.out, config_from(args), progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _curate_report(args: argparse.Namespace) -> int:
    if len(args.inputs) != 2:
        raise SystemExit("usage: i2vgen curate report DIR")
    from curation.report import write_report

    print(write_report(args.inputs[1], config_from(args)))
    return 0


def _curate_search(args: argparse.Namespace) -> int:
    """The clips nearest a picture or a clip: a table on stdout (each hit with the descriptor
    that ranked it) and a contact sheet. A picture is searched by CLIP embedding when the
    config names CLIP weights (curation.scoring.aesthetic_head and aesthetic_clip)."""
    if len(args.inputs) != 2:
        raise SystemExit("usage: i2vgen curate search DIR (--image Q.jpg | --clip-id ID) [--top K] [--sheet PAGE]")
    from pathlib import Path

    from curation.search import SearchError, clip_embedder, search, write_sheet

    try:
        embedder = clip_embedder(config_from(args).curation.scoring) if args.image else None
        hits = search(args.inputs[1], image=args.image, clip_id=args.clip_id, top=args.top, embedder=embedder)
    except SearchError as err:
        raise SystemExit(f"i2vgen curate search: {err}") from None
    for hit in hits:
        row = hit.row
        verdict = "kept" if row.get("keep") else f"dropped: {row.get('drop_reason')}"
        print(f"{hit.similarity:.3f}  {row['clip_id']}  by {hit.by}  {row.get('camera_motion')}  {verdict}  "
              f"{row.get('source')}")
    query = f"image {args.image}" if args.image else f"clip {args.clip_id}"
    by = f", by {hits[0].by}" if hits else ""
    page = Path(args.sheet) if args.sheet else Path(args.inputs[1]) / "search.html"
    print(write_sheet(hits, f"clips nearest {query}{by}", page))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    curate = sub.add_parser(
        "curate",
        help="curate videos and images into Lance tables (or: curate report DIR, curate search DIR)",
        description="i2vgen curate INPUT... --out DIR | i2vgen curate report DIR | "
                    "i2vgen curate search DIR (--image Q.jpg | --clip-id ID)",
    )
    curate.add_argument("inputs", nargs="+",
                        help="files, folders, globs, manifests (CSV/JSONL/Parquet); or 'report DIR'; or 'search DIR'")
    curate.add_argument("--out", help="output folder for clips.lance, images.lance, rejects.lance")
    curate.add_argument("--quiet", action="store_true", help="no progress bar")
    search = curate.add_argument_group("search (curate search DIR)")
    search.add_argument("--image", help="find the clips nearest this picture (by CLIP embedding when the config "
                                        "sets curation.scoring.aesthetic_head and aesthetic_clip, else by fingerprint)")
    search.add_argument("--clip-id", help="find the clips nearest this clip (by its CLIP embedding when it has one, "
                                          "else by fingerprint)")
    search.add_argument("--top", type=int, default=12, help="how many clips (12)")
    search.add_argument("--sheet", help="where to write the contact sheet (default DIR/search.html)")
    add_config_flags(curate, "curate")
    add_config_args(curate, default_preset="paper")  # buckets for the paper's frame sizes
    curate.set_defaults(func=cmd_curate)
