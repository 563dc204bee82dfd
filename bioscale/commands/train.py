"""`bioscale train --config FILE --data DIR --out DIR [--epochs N] [key=value ...]`

Single process, or one of many started by torchrun / srun / the DeepSpeed launcher
(the process environment is read in `distributed/`). Re-running the same command
resumes from the newest good checkpoint in --out.

Errors (a bad key, missing data, divergence, an unusable checkpoint, Ctrl-C) are raised
to `bioscale.cli.main`, which prints one line; a rank of a multi-process run prints its
own line and leaves with `exit_process`, like a successful one."""

from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (configs/...); defaults when omitted")
    parser.add_argument("--data", help="prepared dataset directory (with train/ val/ test/)")
    parser.add_argument("--out", help="run directory (config.yaml, checkpoints/, tb/, result.json)")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    parser.add_argument("--init-from", help="initialise weights from a checkpoint or state dict (not a resume)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its doc and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # DeepSpeed launcher
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.forward.lr=3e-4"
    )


def run(args: argparse.Namespace) -> int:
    from bioscale.training.config_loader import describe, load_config

    if args.help_config:
        print(describe())
        return 0
    overrides = list(args.overrides)
    for key, value in (("data.path", args.data), ("out", args.out), ("train.epochs", args.epochs)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)  # ConfigError: one line from the CLI, exit 2
    from bioscale.distributed import exit_process, read_environment

    env = read_environment()
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = _fit(cfg, args.init_from)
    except (Exception, KeyboardInterrupt) as exc:
        if env.world_size <= 1:
            raise  # the CLI prints it: one line for an expected error, a traceback for a bug
        # A rank of a multi-process run: a normal interpreter exit may abort under the
        # process group (see exit_process), so print here and leave at once.
        from bioscale.cli import report_error

        code = report_error("train", exc, debug=getattr(args, "debug", False), prefix=f" [rank {env.rank}]")
        exit_process(code)
        return code  # not reached: exit_process leaves the process
    if env.rank == 0 and "test_top1_err" in result:
        summary = {
            k: result[k] for k in ("selected_epoch", "val_top1_err", "test_top1_err", "test_top5_err") if k in result
        }
        print(json.dumps(summary))
    if env.world_size > 1:
        exit_process(0)
    return 0


def _fit(cfg, init_from: str | None) -> dict:
    from bioscale.training.divergence import DivergenceError
    from bioscale.training.entry import train_run

    try:
        return train_run(cfg, init_from=init_from)
    except DivergenceError as exc:
        raise DivergenceError(f"{exc}; the last good checkpoint in {cfg.out}/checkpoints is kept") from exc
