"""`bioscale launch --config X --data DIR --out DIR [cluster options] [--local] [--wait] [key=value ...]`

Submits one training run to SLURM through submitit: one task per GPU (or
`--tasks-per-node` CPU processes), the run directory `<out>/<name>`, `%j` logs
in `<out>/<name>/logs/`. Cluster settings come from a profile
(`cluster/profiles/*.yaml`, `--profile`), single keys overridable here.
Time limits and preemption requeue the job; it resumes from the trainer's last
checkpoint. `--local` runs the same job here without SLURM (and waits)."""

from __future__ import annotations

import argparse
import json
import sys

# option -> profile key; shared with `bioscale sweep`
CLUSTER_OPTIONS = (
    ("--nodes", int, "nodes"),
    ("--gpus-per-node", int, "gpus_per_node"),
    ("--tasks-per-node", int, "tasks_per_node"),
    ("--cpus-per-task", int, "cpus_per_task"),
    ("--mem-gb", float, "mem_gb"),
    ("--timeout-min", int, "timeout_min"),
    ("--partition", str, "partition"),
    ("--account", str, "account"),
    ("--qos", str, "qos"),
    ("--constraint", str, "constraint"),
    ("--max-num-timeout", int, "max_num_timeout"),
    ("--signal-delay-s", int, "signal_delay_s"),
)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (override the profile's keys)")
    group.add_argument(
        "--profile",
        help="cluster profile name (cluster/profiles/NAME.yaml) or YAML path; default $BIOSCALE_PROFILE or 'local'",
    )
    for option, kind, key in CLUSTER_OPTIONS:
        group.add_argument(option, type=kind, dest=key, metavar="NAME" if kind is str else "N")


def load_cluster_profile(args: argparse.Namespace):
    from bioscale.cluster.profile import load_profile

    return load_profile(args.profile, **{key: getattr(args, key) for _, _, key in CLUSTER_OPTIONS})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (configs/...)")
    parser.add_argument("--data", required=True, help="prepared dataset directory (train/ val/ test/)")
    parser.add_argument("--out", required=True, help="parent directory; the run directory is OUT/NAME")
    parser.add_argument("--name", help="run name (default: the config's `name`)")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    parser.add_argument("--local", action="store_true", help="run here without SLURM (waits for the end)")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    parser.add_argument("--poll-s", type=float, default=10.0, help="seconds between state checks with --wait")
    add_cluster_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bioscale.cluster import launcher, slurm_jobs
    from bioscale.cluster.executors import SlurmExecutor, SubmissionError
    from bioscale.cluster.profile import ProfileError
    from bioscale.training.config import ConfigError
    from bioscale.training.config_loader import load_config
    from bioscale.training.preflight import check_layout
    from bioscale.training.run_records import read_json
    from bioscale.training.selection import RESULT_FILE

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    try:
        profile = load_cluster_profile(args)
        name = args.name or load_config(args.config, overrides).name
        if args.name:
            overrides.append(f"name={args.name}")
        run_dir = Path(args.out).resolve() / name
        cfg = launcher.build_config(args.config, overrides, str(Path(args.data).resolve()), run_dir)
        layout = check_layout(cfg, profile.world_size, profile.tasks)
        if layout:
            print(layout, flush=True)
    except ProfileError as exc:
        raise ProfileError(f"{exc}; nothing was submitted") from None
    except ConfigError as exc:
        raise ConfigError(f"{exc}; nothing was submitted") from None
    keys = ("selected_epoch", "val_top1_err", "test_top1_err", "epochs_completed")
    if args.local:
        try:
            summary = launcher.launch_here(cfg, profile)
        except Exception as exc:  # the first task's failure; its traceback is in the job's log
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            print(
                f"bioscale launch: the job failed: {lines[-1] if lines else exc!r} (logs: {run_dir / 'logs'})",
                file=sys.stderr,
            )
            return 1
        print(json.dumps({k: summary.get(k) for k in keys}))
        return 0
    executor = SlurmExecutor(run_dir / "logs", profile)
    try:
        job_id = launcher.launch(cfg, executor, world_size=profile.world_size)
    except SubmissionError as exc:
        raise SubmissionError(f"SLURM refused the job: {exc} (profile: {profile.describe()})") from None
    print(
        f"submitted job {job_id} to {executor.describe()}\n  run directory: {run_dir}\n  logs: {run_dir / 'logs'}",
        flush=True,
    )
    if not args.wait:
        return 0
    state = executor.wait([job_id], poll_s=args.poll_s)[job_id]
    if state.state != "COMPLETED":
        err = slurm_jobs.tail(slurm_jobs.log_paths(run_dir / "logs", job_id)[1])
        print(f"bioscale launch: job {job_id} ended {state.state} (exit {state.exit_code})\n{err}", file=sys.stderr)
        return 1
    result = read_json(run_dir / RESULT_FILE) or {}
    print(json.dumps({k: result.get(k) for k in keys}))
    return 0
