"""`bioscale bench train`: training-step throughput of every learning rule against BP,
same network, same batch, one process, one thread (per-thread CPU time, medians over
repetitions in which the rules alternate). A full step: forward, backward with the
rule's boundary signals and inverse losses, both Adam steps.

`--compare-lc-kernels` also times every rule with the LC layers on their PyTorch kernels
(`lc_native.disabled()`), alternating with the native ones in the same process, and
reports the speedup of the native kernels per rule."""

from __future__ import annotations

import argparse

import torch

from bioscale.algorithms import RULES, AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
from bioscale.bench.timing import Context
from bioscale.models import lc_native
from bioscale.training.host_memory import keep_freed_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="iclr_mnist_lc", help="architecture from the registry")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=None, help="timed steps per rule (default 20, quick 2)")
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    parser.add_argument(
        "--compare-lc-kernels",
        action="store_true",
        help="also time each rule on the PyTorch LC kernels, alternating with the native ones",
    )


def _step_fn(arch: str, rule: str, x: torch.Tensor, y: torch.Tensor):
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=tuple(x.shape[1:]))
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4)))
    return lambda: updater.step(x, y)


def _on_torch_kernels(step):
    def run():
        with lc_native.disabled():
            step()

    return run


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
    steps = {rule: _step_fn(args.arch, rule, x, y) for rule in RULES}
    if args.compare_lc_kernels:
        steps.update({f"{rule}/torch": _on_torch_kernels(_step_fn(args.arch, rule, x, y)) for rule in RULES})
    timed = ctx.compare(steps)
    ms = {rule: timed[rule] for rule in RULES}
    ips = {rule: args.batch / (t / 1e3) for rule, t in ms.items()}
    ratio = {rule: ips[rule] / ips["bp"] for rule in RULES}
    print(f"{args.arch}, batch {args.batch}, 1 thread, median of {reps} steps (per-thread CPU time):")
    for rule in RULES:
        print(f"  {rule:7s} {ms[rule]:8.1f} ms/step  {ips[rule]:8.0f} images/s  {ratio[rule]:.2f}× BP throughput")
    native = lc_native.usable(x)
    result = {
        "arch": args.arch,
        "batch": args.batch,
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
        "images_per_sec": {k: round(v, 1) for k, v in ips.items()},
        "ratio_to_bp": {k: round(v, 3) for k, v in ratio.items()},
        "lc_kernel": "native" if native else "torch",
    }
    if args.compare_lc_kernels:
        torch_ms = {rule: timed[f"{rule}/torch"] for rule in RULES}
        print("the same steps on the PyTorch LC kernels:")
        for rule in RULES:
            print(f"  {rule:7s} {torch_ms[rule]:8.1f} ms/step  native kernels {torch_ms[rule] / ms[rule]:.2f}× faster")
        result["torch_lc_ms_per_step"] = {k: round(v, 2) for k, v in torch_ms.items()}
        result["lc_kernel_speedup"] = {k: round(torch_ms[k] / ms[k], 3) for k in RULES}
    return result
