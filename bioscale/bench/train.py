"""`bioscale bench train`: training-step throughput of every learning rule against BP,
same network, same batch, one process, one thread (per-thread CPU time, medians over
repetitions in which the rules alternate). A full step: forward, backward with the
rule's boundary signals and inverse losses, both Adam steps."""

from __future__ import annotations

import argparse

import torch

from bioscale.algorithms import RULES, AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
from bioscale.bench.timing import Context
from bioscale.training.host_memory import keep_freed_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="iclr_mnist_lc", help="architecture from the registry")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=None, help="timed steps per rule (default 20, quick 2)")
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")


def _step_fn(arch: str, rule: str, x: torch.Tensor, y: torch.Tensor):
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=tuple(x.shape[1:]))
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4)))
    return lambda: updater.step(x, y)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    keep_freed_memory()
    reps = args.reps or (2 if args.quick else 20)
    ctx = Context(quick=args.quick, reps=reps, warmup=1 if args.quick else 3, batch=args.batch, imagenet_batch=0)
    from bioscale.models import get_arch

    shape = get_arch(args.arch).input_shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *shape, generator=g)
    y = torch.randint(0, get_arch(args.arch).num_classes, (args.batch,), generator=g)
    ms = ctx.compare({rule: _step_fn(args.arch, rule, x, y) for rule in RULES})
    ips = {rule: args.batch / (t / 1e3) for rule, t in ms.items()}
    ratio = {rule: ips[rule] / ips["bp"] for rule in RULES}
    print(f"{args.arch}, batch {args.batch}, 1 thread, median of {reps} steps (per-thread CPU time):")
    for rule in RULES:
        print(f"  {rule:7s} {ms[rule]:8.1f} ms/step  {ips[rule]:8.0f} images/s  {ratio[rule]:.2f}× BP throughput")
    return {
        "arch": args.arch,
        "batch": args.batch,
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
        "images_per_sec": {k: round(v, 1) for k, v in ips.items()},
        "ratio_to_bp": {k: round(v, 3) for k, v in ratio.items()},
    }
