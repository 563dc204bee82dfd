"""`bioscale sweep --config X --data DIR --out SWEEP --trials 60 --space paper|FILE.yaml
[--prune-after-epochs 10 --keep 1] [--local] [--max-parallel P] [cluster options] [key=value ...]`
`bioscale sweep status --out SWEEP` · `bioscale sweep report --out SWEEP`

Random search (seeded) as SLURM job arrays, or with `--local` as a pool of
`--max-parallel` processes on this machine (no SLURM); with pruning, every trial trains
`--prune-after-epochs` epochs, the best `--keep` continue from their checkpoints
to `--epochs`. Waits until done unless `--no-wait`; re-running the same command
continues the sweep and skips finished trials (`bioscale sweep --out SWEEP`
alone continues a stored sweep). status/report print the ranked table and write
SWEEP/report.csv and SWEEP/report.md."""

from __future__ import annotations

import argparse

from bioscale.commands.launch import add_cluster_arguments, load_cluster_profile

ACTIONS = ("run", "status", "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="sweep directory")
    parser.add_argument("--config", help="experiment YAML every trial starts from")
    parser.add_argument("--data", help="prepared dataset directory")
    parser.add_argument("--trials", type=int, help="number of random configurations (the paper: 60)")
    parser.add_argument("--space", default="paper", help="'paper' (Table 4 for the config's rule) or a YAML file")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (trial i's values depend only on it and i)")
    parser.add_argument("--epochs", type=int, help="epochs of a full trial (default: the config's train.epochs)")
    parser.add_argument(
        "--prune-after-epochs",
        type=_int_list,
        help="rank all trials after this many epochs ... (successive halving: a list, e.g. 3,10)",
    )
    parser.add_argument(
        "--keep", type=_int_list, default=[1], help="... and continue only the best KEEP (one per stage, e.g. 4,1)"
    )
    parser.add_argument("--name", help="sweep name (default: the config's name)")
    parser.add_argument(
        "--local", action="store_true", help="run the trials here as a process pool, no SLURM (waits for the end)"
    )
    parser.add_argument(
        "--max-parallel", type=int, help="trials running at once (SLURM's array %%N; --local: pool size, default 1)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="submit what is due and return; re-run to continue (SLURM only)"
    )
    parser.add_argument("--poll-s", type=float, default=15.0, help="seconds between job state checks")
    add_cluster_arguments(parser)
    parser.add_argument(
        "words",
        nargs="*",
        metavar="[run|status|report] key=value",
        help="action (default run), then config overrides for every trial",
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or a comma-separated list of them, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from bioscale.cluster.executors import make_executor
    from bioscale.cluster.profile import ProfileError
    from bioscale.cluster.sweep import Sweep, run_sweep
    from bioscale.cluster.sweep_report import summary, write_report
    from bioscale.cluster.sweep_spec import make_spec
    from bioscale.training.config import ConfigError

    words = list(args.words)
    action = words.pop(0) if words and words[0] in ACTIONS else "run"
    bad = [w for w in words if "=" not in w]
    if bad:
        raise ConfigError(
            f"unexpected {bad[0]!r}: the action is one of {', '.join(ACTIONS)} (first), "
            "the rest are key=value overrides"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = Path(args.out)
    if action != "run":
        sweep = Sweep.create_or_resume(root, None)
        kind = sweep.last_cluster() or ("local" if args.local else "slurm")
        profile = None if kind == "local" else load_cluster_profile(args)
        sweep.executor = make_executor(kind, sweep.root / "logs", profile=profile)
        text, csv_path, md_path = write_report(sweep, sweep.status())
        print(f"{text}\n\nwritten: {csv_path}, {md_path}")
        return 0
    starting = args.config is not None or args.trials is not None
    if starting and (args.trials is None or args.data is None):
        raise ConfigError("a new sweep needs --config, --data and --trials (and --space, default paper)")
    if args.local and args.no_wait:
        raise ConfigError("--local runs the trials in this process's pool: --no-wait needs SLURM")
    if args.local and (args.tasks_per_node or 1) > 1:
        raise ConfigError("--local runs one process per trial: --tasks-per-node > 1 needs SLURM")
    try:
        spec = None
        if starting:
            spec = make_spec(
                args.config,
                words,
                args.data,
                args.space,
                args.trials,
                args.seed,
                args.epochs,
                args.prune_after_epochs,
                args.keep,
                args.name,
            )
        profile = load_cluster_profile(args)
        executor = make_executor(
            "local" if args.local else "slurm",
            Path(args.out).resolve() / "logs",
            profile=profile,
            max_parallel=args.max_parallel,
            threads_per_job=args.cpus_per_task,
        )
        sweep = Sweep.create_or_resume(root, spec, executor)
    except (ConfigError, ProfileError) as exc:
        raise type(exc)(f"{exc}; nothing was submitted") from None
    print(f"sweep {sweep.root}: trials run on {executor.describe()}", flush=True)

    def report_progress(status, submitted):
        print(summary(sweep, status) + (f"; submitted {', '.join(submitted)}" if submitted else ""), flush=True)

    try:
        status = run_sweep(sweep, wait=not args.no_wait, poll_s=args.poll_s, on_change=report_progress)
    finally:
        executor.shutdown()
    text, csv_path, md_path = write_report(sweep, status)
    print(f"{text}\n\nwritten: {csv_path}, {md_path}")
    if sweep.complete(status) or args.no_wait:
        return 0
    return 1
