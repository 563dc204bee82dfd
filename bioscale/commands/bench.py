"""`bioscale bench <suite> [--json]`: each suite lives in `bioscale/bench/<suite>.py`
with `add_arguments(parser)` and `run(args) -> dict`; the dict is printed as
one JSON object on the last line of stdout when --json is given."""

from __future__ import annotations

import argparse
import importlib
import json

SUITES = ("layers", "data", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True)
    for name in SUITES:
        p = sub.add_parser(name)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        importlib.import_module(f"bioscale.bench.{name}").add_arguments(p)


def run(args: argparse.Namespace) -> int:
    result = importlib.import_module(f"bioscale.bench.{args.suite}").run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
