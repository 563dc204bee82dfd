"""`bioscale doctor [--device cpu|cuda] [--config FILE] [--json] [key=value ...]`: what to run
first on a new node -- versions (torch, CUDA, driver, NCCL, DALI, DeepSpeed), the GPUs seen,
whether DALI's CUDA build fits the driver, the process environment (SLURM / torchrun), and
one training step of every learning rule on the chosen device with the configured
architecture and precision. Exit 0 when every check passes; 1 with the first failure's
reason in one line otherwise (the checks live in `bioscale.training.doctor`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="shorthand for distributed.device=...")
    parser.add_argument("--config", help="experiment YAML whose model / precision / rule settings to check")
    parser.add_argument("--batch", type=int, help="batch of the test steps (default: the config's; at most 16 on CPU)")
    parser.add_argument("--no-steps", action="store_true", help="versions and environment only, no training steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.arch=...")


def run(args: argparse.Namespace) -> int:
    from bioscale.training.doctor import DoctorError, run_checks

    report = run_checks(
        args.config,
        args.overrides,
        device=args.device,
        batch=args.batch,
        steps=not args.no_steps,
        echo=lambda line: print(line, flush=True),
    )
    ok = not report.failures
    print(f"doctor: {'all checks passed' if ok else f'{len(report.failures)} failed'} in {report.facts['seconds']} s")
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True, default=str), flush=True)
    if not ok:
        raise DoctorError(report.reason())
    return 0
