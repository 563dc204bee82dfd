"""`bioscale train --config FILE --data DIR --out DIR [--epochs N] [key=value ...]`

Single process, or one of many started by torchrun / srun / the DeepSpeed launcher
(the process environment is read in `distributed/`). Re-running the same command
resumes from the newest good checkpoint in --out."""

from __future__ import annotations

import argparse
import json
import logging
import sys


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
    from bioscale.training.config import ConfigError, describe, load_config

    if args.help_config:
        print(describe())
        return 0
    overrides = list(args.overrides)
    for key, value in (("data.path", args.data), ("out", args.out), ("train.epochs", args.epochs)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"bioscale train: {exc}", file=sys.stderr)
        return 2
    from bioscale.distributed import exit_process, read_environment
    from bioscale.training.divergence import DivergenceError
    from bioscale.training.trainer import Trainer

    env = read_environment()
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        trainer = Trainer(cfg, init_from=args.init_from)
        result = trainer.fit()
    except ConfigError as exc:
        print(f"bioscale train: {exc}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"bioscale train: {exc}; the last good checkpoint in {cfg.out}/checkpoints is kept", file=sys.stderr)
        return 3
    if env.rank == 0 and "test_top1_err" in result:
        summary = {
            k: result[k] for k in ("selected_epoch", "val_top1_err", "test_top1_err", "test_top5_err") if k in result
        }
        print(json.dumps(summary))
    if env.world_size > 1:
        exit_process(0)
    return 0
