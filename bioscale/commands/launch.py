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

    from bioscale.cluster import launcher
    from bioscale.cluster.profile import ProfileError
    from bioscale.training.config import ConfigError, load_config

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
    except (ConfigError, ProfileError) as exc:
        print(f"bioscale launch: {exc}\nnothing was submitted", file=sys.stderr)
        return 2
    try:
        job = launcher.launch(cfg, profile, local=args.local)
    except launcher.SubmissionError as exc:
        print(f"bioscale launch: SLURM refused the job:\n{exc}\nprofile: {profile.describe()}", file=sys.stderr)
        return 1
    where = "locally" if args.local else f"to SLURM ({profile.describe()})"
    print(f"submitted job {job.job_id} {where}\n  run directory: {run_dir}\n  logs: {run_dir / 'logs'}", flush=True)
    if not (args.local or args.wait):
        return 0
    if args.local:
        try:
            job.results()  # every task's outcome; raises the first failure
            ok = True
        except Exception as exc:  # the job's own traceback is in its log
            print(f"bioscale launch: the job failed: {exc}", file=sys.stderr)
            ok = False
    else:
        state = launcher.wait_for([job.job_id], poll_s=args.poll_s)[job.job_id]
        ok = state.state == "COMPLETED"
        if not ok:
            from bioscale.cluster import slurm_jobs

            err = slurm_jobs.tail(slurm_jobs.log_paths(run_dir / "logs", job.job_id)[1])
            print(
                f"bioscale launch: job {job.job_id} ended {state.state} (exit {state.exit_code})\n{err}",
                file=sys.stderr,
            )
    result = launcher.read_result(run_dir)
    if ok and result:
        keys = ("selected_epoch", "val_top1_err", "test_top1_err", "epochs_completed")
        print(json.dumps({k: result.get(k) for k in keys}))
    return 0 if ok else 1
