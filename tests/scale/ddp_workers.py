"""What the DDP tests run on every rank (`ddp_jobs`) and the single-process reference with
the global batch (`reference`). Importable by name: the forkserver children import it."""

from __future__ import annotations

import torch

from bioscale.algorithms import RuleConfig, Updater, build_learner
from bioscale.distributed.ddp_engine import DDPUpdater
from bioscale.distributed.process_group import get_rank, get_world_size
from tests.scale.workers import ARCH, OPTIM, make_batches

TP = ("dtp", "sdtp", "aosdtp")


def make_learner(rule: str, schedule: str):
    cfg = RuleConfig(rule=rule, sigma=0.1, schedule=schedule) if rule in TP else RuleConfig(rule=rule)
    return build_learner(ARCH, cfg, seed=0, dtype=torch.float64)


def _phases(rule: str, schedule: str, steps: int) -> list[str]:
    if schedule == "alternating":  # one phase per step, as epochs of the alternating schedule
        return ["inverse" if i % 2 == 0 else "forward" for i in range(steps)]
    return ["both"] * steps


def _result(learner, losses) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in learner.state_dict().items()},
        # the last step's gradients, as the optimisers saw them (None: not trained that step)
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in learner.named_parameters()},
        "loss": losses,
    }


def reference(rule: str, schedule: str, steps: int, batch: int) -> dict:
    """One process, batch `batch`, the plain Updater's step (noise passed in)."""
    learner = make_learner(rule, schedule)
    updater = Updater(learner, OPTIM)
    losses = []
    for (x, y, *noise), phase in zip(make_batches(rule, steps, batch), _phases(rule, schedule, steps)):
        for opt in updater.optimizers():
            opt.zero_grad(set_to_none=True)
        out = learner(x, y, phase=phase, noise=noise[0] if noise else None)
        out.loss.backward()
        if phase != "inverse":
            updater.forward.step()
        if updater.inverse is not None and phase != "forward":
            updater.inverse.step()
        losses.append(float(out.task_loss))
    return _result(learner, losses)


def ddp_jobs(jobs: list[tuple[str, str]], steps: int, batch: int) -> list[dict]:
    """Every rank: for each (rule, schedule), DDPUpdater on its slice of the same global
    batches (and of the shared noise)."""
    rank, world = get_rank(), get_world_size()
    results = []
    for rule, schedule in jobs:
        learner = make_learner(rule, schedule)
        updater = DDPUpdater(learner, OPTIM)
        losses = []
        mine = slice(rank * batch // world, (rank + 1) * batch // world)
        for (x, y, *noise), phase in zip(make_batches(rule, steps, batch), _phases(rule, schedule, steps)):
            eps = {l: n[mine] for l, n in noise[0].items()} if noise else None
            out = updater.step(x[mine], y[mine], phase, noise=eps)
            losses.append(float(out.task_loss))
        results.append({**_result(learner, losses), "phases": sorted(updater.wrappers)})
    return results
