"""Functions the scale tests run on every rank (importable: the launcher's children and
torchrun import them by name) plus the single-process reference they are compared with."""

from __future__ import annotations

import torch

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
from bioscale.distributed.pipeline import Pipeline
from bioscale.distributed.pipeline_schedule import PipelineConfig

ARCH = "iclr_mnist_lc"
OPTIM = OptimConfig(forward=AdamConfig(lr=1e-3), inverse=AdamConfig(lr=1e-3))


def rule_config(rule: str) -> RuleConfig:
    return RuleConfig(rule=rule, sigma=0.1) if rule in ("dtp", "sdtp", "aosdtp") else RuleConfig(rule=rule)


def make_learner(rule: str, dtype=torch.float64):
    return build_learner(ARCH, rule_config(rule), seed=0, dtype=dtype)


def make_batches(rule: str, steps: int, batch: int, dtype=torch.float64, seed: int = 1) -> list:
    """Random images and labels, and for TP rules the inverse-loss noise ε as a shared draw
    (per sample, so it slices with the batch like x does)."""
    learner = make_learner(rule, dtype)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, *learner.net.input_shape, generator=g, dtype=dtype)
        y = torch.randint(0, 10, (batch,), generator=g)
        noise = {
            l: 0.1 * torch.randn(batch, *learner.rule.noise_shape(learner.net, l), generator=g, dtype=dtype)
            for l in learner.rule.inverse_layers(learner.net.depth)
        }
        out.append((x, y, noise) if noise else (x, y))
    return out


def reference(
    rule: str, steps: int, batch: int, phases: list[str] | None = None, record=lambda out: float(out.task_loss)
) -> tuple[dict, list]:
    """One process, the whole global batch per step, plain loss.backward(); step() of the
    optimisers the phase trains (as algorithms.Updater, with the shared noise passed in).
    Returns the final state and `record(out)` of every step (default: the task loss)."""
    learner = make_learner(rule)
    updater = Updater(learner, OPTIM)
    losses = []
    for i, (x, y, *noise) in enumerate(make_batches(rule, steps, batch)):
        phase = phases[i] if phases else "both"
        for opt in updater.optimizers():
            opt.zero_grad(set_to_none=True)
        out = learner(x, y, phase=phase, noise=noise[0] if noise else None)
        out.loss.backward()
        if phase != "inverse":
            updater.forward.step()
        if updater.inverse is not None and phase != "forward":
            updater.inverse.step()
        losses.append(record(out))
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}, losses


def pipeline_jobs(jobs: list[dict]) -> list[dict]:
    """Each job: rule, steps, batch, and PipelineConfig fields. Returns this rank's stage
    state, the global loss curve and the staleness summary per job."""
    results = []
    for job in jobs:
        job = dict(job)
        rule, steps, batch = job.pop("rule"), job.pop("steps"), job.pop("batch")
        dtype, phases = job.pop("dtype", torch.float64), job.pop("phases", None)
        pipe = Pipeline(make_learner(rule, dtype), OPTIM, PipelineConfig(**job))
        batches = make_batches(rule, steps, batch, dtype)
        if phases:  # the alternating schedule: one phase per batch
            outs = [pipe.train([b], phase=ph) for b, ph in zip(batches, phases)]
            out = {"loss": [o["loss"][0] for o in outs], "staleness": outs[-1]["staleness"]}
        else:
            out = pipe.train(batches)
        results.append({"state": pipe.stage_state(), **out, "layers": pipe.layers})
    return results
