"""`bioscale bench pool`: is a table cheaper as N runs in parallel with one thread each
(`--max-parallel N`, the local executor's pool) or one run at a time with all N cores? Both
layouts train the same step (forward, the rule's backward, both Adam steps) for the same
wall-clock window, in fresh spawned processes started together; the figure is the ratio
of their summed training throughput (images/s), measured in this one invocation."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="iclr_mnist_lc", help="architecture from the registry")
    parser.add_argument("--rule", default="sdtp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the two layouts alternating")
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")


def _train(arch: str, rule: str, batch: int, threads: int, steps: int, start, out) -> None:
    import torch

    from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
    from bioscale.models import get_arch

    torch.set_num_threads(threads)
    spec = get_arch(arch)
    g = torch.Generator().manual_seed(os.getpid())
    x = torch.randn(batch, *spec.input_shape, generator=g)
    y = torch.randint(0, spec.num_classes, (batch,), generator=g)
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=tuple(x.shape[1:]))
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4)))
    for _ in range(3):
        updater.step(x, y)
    start.wait()  # every process of the layout times the same window
    t0 = time.perf_counter()
    for _ in range(steps):
        updater.step(x, y)
    out.put(steps * batch / (time.perf_counter() - t0))


def _throughput(args: argparse.Namespace, processes: int, threads: int, steps: int) -> float:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_train, args=(args.arch, args.rule, args.batch, threads, steps, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def run(args: argparse.Namespace) -> dict:
    steps = 3 if args.quick else args.steps
    n = max(1, args.cores)
    pool, single = [], []
    for _ in range(1 if args.quick else args.rounds):
        single.append(_throughput(args, 1, n, steps))
        pool.append(_throughput(args, n, 1, steps))
    one, many = max(single), max(pool)
    print(f"{args.arch}, {args.rule}, batch {args.batch}, {n} cores, {steps} steps per process, best of {len(pool)}:")
    print(f"  1 run × {n} threads: {one:8.0f} images/s")
    print(f"  {n} runs × 1 thread: {many:8.0f} images/s  ({many / one:.2f}× the single run)")
    return {
        "arch": args.arch,
        "rule": args.rule,
        "batch": args.batch,
        "cores": n,
        "single_run_images_per_sec": round(one, 1),
        "parallel_runs_images_per_sec": round(many, 1),
        "parallel_vs_single_ratio": round(many / one, 3),
        "load_average": round(os.getloadavg()[0], 2),
    }
