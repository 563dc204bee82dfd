"""The `bioscale` command. Subcommands live in `bioscale/commands/<name>.py` and
are imported only when chosen, so `bioscale --help` stays instant and a data
preparation never imports DeepSpeed.

Each command module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "prepare": "write WebDataset shards + DALI indices + manifests from a raw dataset",
    "inspect": "verify shards against their manifest (counts, checksums, decodes)",
    "train": "train a model with a learning rule (one process, torchrun, DeepSpeed)",
    "launch": "submit a training run to SLURM through submitit (or --local)",
    "sweep": "random hyperparameter search as a SLURM job array, with pruning",
    "reproduce": "run the paper's experiments and tabulate them",
    "bench": "benchmarks: layers, data, train (ratios against a same-process baseline)",
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bioscale <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "`bioscale <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bioscale: unknown command {name!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bioscale.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"bioscale {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
