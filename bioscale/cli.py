"""The `bioscale` command. Subcommands live in `bioscale/commands/<name>.py` and
are imported only when chosen, so `bioscale --help` stays instant and a data
preparation never imports DeepSpeed.

Each command module defines `add_arguments(parser)` and `run(args) -> int`.

Errors: every expected failure is a `UserError` (data_pipeline/errors.py; `DataError`,
`ConfigError`, `CheckpointError`, `DivergenceError`, the cluster's submission errors, ...).
`main` catches it from any command and prints one line, `bioscale <command>: <message>`,
exiting with the error class's `exit_code` (2 config/usage, 1 data/submission, 3
divergence); Ctrl-C prints one line and exits 130. Anything else is a bug and keeps its
traceback, as do all errors with `bioscale --debug <command> ...` (or `--debug` after the
command, or BIOSCALE_DEBUG=1 in the environment, e.g. for jobs started by a launcher).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from bioscale.data_pipeline.errors import UserError  # no torch: `--help` stays instant

COMMANDS: dict[str, str] = {
    "prepare": "write WebDataset shards + DALI indices + manifests from a raw dataset",
    "inspect": "verify shards against their manifest (counts, checksums, decodes)",
    "train": "train a model with a learning rule (one process, torchrun, DeepSpeed)",
    "launch": "submit a training run to SLURM through submitit (or --local)",
    "sweep": "random hyperparameter search with pruning: SLURM job arrays or a local pool (--local)",
    "reproduce": "run the paper's experiments and tabulate them",
    "doctor": "check a node: versions, GPUs, DALI vs driver, environment, one step of every rule",
    "bench": "benchmarks: layers, data, train, scale, ddp, pool, gpu, precision (ratios to a same-process baseline)",
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bioscale [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "`bioscale <command> --help` for a command's options; `--debug` shows the traceback of an error.",
    ]
    return "\n".join(lines)


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def one_line(message: str, limit: int = 600) -> str:
    """A (possibly multi-line) message as one line: lines joined with "; " (or a space after
    a colon), shortened in the middle past `limit` characters."""
    parts = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = ""
    for part in parts:
        text += part if not text else (" " if text.endswith(":") else "; ") + part
    if len(text) > limit:
        text = text[: limit // 2 - 3] + " ... " + text[-(limit // 2 - 2) :]
    return text or "failed"


def report_error(command: str, exc: BaseException, *, debug: bool = False, prefix: str = "") -> int:
    """Print what `main` prints for `exc` and return the exit status: one line for an
    expected error (`UserError`) or Ctrl-C, the full traceback for a bug or with `debug`.
    For code that must leave with `os._exit` (a rank of a multi-process run)."""
    if isinstance(exc, KeyboardInterrupt) and not debug:
        print(f"bioscale {command}{prefix}: interrupted; re-run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    if isinstance(exc, UserError) and not debug:
        print(f"bioscale {command}{prefix}: {one_line(str(exc))}", file=sys.stderr)
        return int(exc.exit_code)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return int(exc.exit_code) if isinstance(exc, UserError) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `bioscale ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, what a shell reports


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("BIOSCALE_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bioscale: unknown command {name!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"bioscale.commands.{name}")
        parser = argparse.ArgumentParser(prog=f"bioscale {name}", description=COMMANDS[name])
        parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        module.add_arguments(parser)
        args = parser.parse_args(rest)
        args.debug = debug = debug or args.debug
        return int(module.run(args) or 0)
    except (UserError, KeyboardInterrupt) as exc:
        if debug:
            raise
        return report_error(name, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
