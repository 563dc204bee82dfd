"""`bioscale bench ddp`: step time of the data-parallel backends on 2 local gloo CPU ranks
(one thread each) at the same per-rank batch: `distributed.backend=none` (SUM all-reduce
after backward), `ddp` (DistributedDataParallel, SUM comm hook, one wrapper per phase)
and, for the alternating schedule, one DDP wrapper with `find_unused_parameters=True`.
Wall time between barriers on rank 0 after warm-up steps, modes interleaved round by
round so the machine's load hits them alike; the median round is reported."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
from bioscale.distributed.ddp_engine import DDPUpdater
from bioscale.distributed.gradient_sync import all_reduce_gradients
from bioscale.distributed.pipeline_launch import run_ranks
from bioscale.distributed.process_group import barrier

OPTIM = OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="iclr_mnist_lc", help="architecture from the registry")
    parser.add_argument("--rule", default="sdtp")
    parser.add_argument("--schedule", default="alternating", choices=("parallel", "alternating"))
    parser.add_argument("--batch", type=int, default=64, help="batch per rank")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    parser.add_argument("--ranks", type=int, default=2)


def _updaters(args) -> dict:
    def learner():
        cfg = RuleConfig(rule=args.rule, schedule=args.schedule) if args.rule in ("dtp", "sdtp", "aosdtp") else None
        return build_learner(args.arch, cfg or RuleConfig(rule=args.rule), seed=0)

    modes = {
        "none_allreduce": Updater(learner(), OPTIM, grad_sync=all_reduce_gradients),
        "ddp": DDPUpdater(learner(), OPTIM, bucket_cap_mb=args.bucket_mb),
    }
    if args.schedule == "alternating":
        modes["ddp_find_unused"] = DDPUpdater(learner(), OPTIM, bucket_cap_mb=args.bucket_mb, per_phase=False)
    return modes


def worker(args) -> dict:
    torch.manual_seed(0)
    modes = _updaters(args)
    any_learner = next(iter(modes.values())).learner
    shape, classes = any_learner.net.input_shape, any_learner.net.num_classes
    x, y = torch.randn(args.batch, *shape), torch.randint(0, classes, (args.batch,))
    phases = ["inverse", "forward"] if args.schedule == "alternating" else ["both"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for mode, updater in modes.items():
            for phase in phases:
                barrier()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    updater.step(x, y, phase)
                barrier()
                if rnd:
                    times[mode].append((time.perf_counter() - t0) / args.steps)
    return {m: statistics.median(t) for m, t in times.items()}


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ranks = run_ranks(worker, args.ranks, args)
    step_ms = {m: 1e3 * t for m, t in ranks[0].items()}
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(
        f"{args.arch}, rule {args.rule} ({args.schedule}), batch {args.batch} per rank × {args.ranks} gloo ranks, "
        f"1 thread each, bucket {args.bucket_mb} MB, {cores} CPU cores, load average {load:.1f} at the end:"
    )
    base = step_ms["none_allreduce"]
    for m, ms in step_ms.items():
        print(f"  {m:16s} {ms:8.1f} ms/step  ({ms / base:.3f}× backend none)")
    return {
        "arch": args.arch,
        "rule": args.rule,
        "schedule": args.schedule,
        "batch_per_rank": args.batch,
        "ranks": args.ranks,
        "bucket_mb": args.bucket_mb,
        "cpu_cores": cores,
        "load_average": load,
        "step_ms": step_ms,
        "ddp_vs_none": round(step_ms["ddp"] / base, 3),
    }
