"""torchrun worker (2 gloo ranks), `STAGES RULE`: instant weight sharing on a DeepSpeed
engine at the ZeRO stages given (RULE = kp: KP's decay relation on the engine instead).
After `share_weights` both the module's weights and the optimizer's fp32 master copy hold
one filter per LC layer; one more step keeps the weights within a few learning rates of
shared (had the master copy kept the untied values, the step would copy them back).
Prints one JSON line per stage on rank 0."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from types import SimpleNamespace

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, build_learner
from bioscale.distributed.deepspeed_engine import DeepSpeedUpdater
from bioscale.training.weight_sharing import lc_layers, share_weights

LR = 1e-3


def spread(w: torch.Tensor) -> float:
    """Largest distance of any position's filter entry from the position average."""
    return (w - w.mean(0, keepdim=True)).abs().max().item()


def full(p, stage):
    ctx = deepspeed.zero.GatheredParameters([p]) if stage == 3 else contextlib.nullcontext()
    with ctx:
        return p.detach().clone()


def run(stage: int) -> dict:
    rank = dist.get_rank()
    learner = build_learner("iclr_mnist_lc", RuleConfig(rule=sys.argv[2]), seed=0, input_shape=(1, 28, 28))
    dist_cfg = SimpleNamespace(zero_stage=stage, precision="fp32")
    updater = DeepSpeedUpdater(learner, OptimConfig(forward=AdamConfig(lr=LR), inverse=AdamConfig(lr=LR)), dist_cfg, 8)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    for _ in range(2):
        updater.step(x, y)
    layers = lc_layers(learner)
    before = [spread(full(layer.weight, stage)) for layer in layers]
    shared = share_weights(learner, deepspeed_stage=stage)
    after = [spread(full(layer.weight, stage)) for layer in layers]
    master = []
    for layer in layers:
        m = safe_get_full_fp32_param(layer.weight)
        master.append(None if m is None else spread(m.view_as(full(layer.weight, stage))))
    updater.step(x, y)
    next_step = [spread(full(layer.weight, stage)) for layer in layers]
    return dict(
        stage=stage,
        shared=shared,
        before=before,
        after=after,
        master=master,
        next_step=next_step,
        partitioned=[hasattr(layer.weight, "ds_id") and layer.weight.numel() == 0 for layer in layers],
    )


def run_kp(stage: int) -> dict:
    """KP on the engine: B_l − W_l ← (1 − lr·λ)(B_l − W_l) each step (equal gradients and Adam
    states, decoupled decay from algorithms.optim.param_groups), while W_l learns."""
    lam = 0.5
    learner = build_learner("iclr_mnist_lc", RuleConfig(rule="kp", kp_decay=lam), seed=0, input_shape=(1, 28, 28))
    dist_cfg = SimpleNamespace(zero_stage=stage, precision="fp32")
    updater = DeepSpeedUpdater(learner, OptimConfig(forward=AdamConfig(lr=LR)), dist_cfg, 8)
    g = torch.Generator().manual_seed(dist.get_rank())
    layers = [b.layer for b in learner.net.blocks[1:]]
    err, moved = 0.0, 0.0
    for _ in range(3):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        d0 = [full(lay.feedback_weight, stage) - full(lay.weight, stage) for lay in layers]
        w0 = [full(lay.weight, stage) for lay in layers]
        updater.step(x, y)
        for lay, d, w in zip(layers, d0, w0):
            d1 = full(lay.feedback_weight, stage) - full(lay.weight, stage)
            err = max(err, ((d1 - (1 - LR * lam) * d).abs().max() / d.abs().max()).item())
            moved = min(moved or 1.0, (full(lay.weight, stage) - w).abs().max().item())
    return dict(stage=stage, relative_error=err, min_weight_change=moved)


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    for stage in [int(s) for s in sys.argv[1].split(",")]:
        res = run_kp(stage) if sys.argv[2] == "kp" else run(stage)
        if dist.get_rank() == 0:
            print(json.dumps(res), flush=True)
    dist.barrier()
    os._exit(0)  # see shared/notes/deepspeed-cpu.md: exit without destroy_process_group


if __name__ == "__main__":
    main()
