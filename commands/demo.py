"""``i2vgen demo``: the whole system on a generated corpus, ending in one HTML page."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from demo.run import budget_from, run_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_demo(args.out, budget_from(args.budget))
    print(json.dumps({"index": str(Path(args.out) / "index.html"), "means": summary["means"],
                      "trained_is_better": summary["trained_is_better"], "timings_s": summary["timings_s"]}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole system on a generated corpus, ending in DIR/index.html")
    demo.add_argument("--out", required=True, help="the demo's folder; rerunning with it resumes")
    demo.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                      help="change the demo's budget, e.g. base_steps=300 (keys: demo.run.DemoBudget)")
    demo.set_defaults(func=cmd_demo)
