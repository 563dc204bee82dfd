"""Separate Adam optimizers for forward (θ) and inverse (λ) weights, and the update step.

Separate optimizers (not one with two param groups) because the alternating schedule
steps only one of them per epoch: a shared Adam would keep moving the idle group on
its momentum."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from bioscale.algorithms.config import AdamConfig, OptimConfig
from bioscale.algorithms.learner import Learner, StepOutput


def param_groups(params, weight_decay: float = 0.0) -> list[dict]:
    """Split `params` into optimizer groups by the `decoupled_decay` attribute a rule may set
    on a parameter (KP sets it on W_l and B_l): those get that decay as decoupled weight decay
    (p ← p − lr·λ·p, torch's `decoupled_weight_decay=True`), the rest `weight_decay` as usual.
    One group when nothing is tagged. Under SGD, whose weight decay is coupled, the tagged
    group's update is the same p − lr·(g + λp)."""
    params = list(params)
    plain = [p for p in params if getattr(p, "decoupled_decay", None) is None]
    groups = [{"params": plain, "weight_decay": weight_decay}] if plain or not params else []
    by_decay: dict[float, list] = {}
    for p in params:
        if getattr(p, "decoupled_decay", None) is not None:
            by_decay.setdefault(float(p.decoupled_decay), []).append(p)
    for decay, tagged in by_decay.items():
        groups.append({"params": tagged, "weight_decay": decay, "decoupled_weight_decay": True})
    return groups


def _adam(params, cfg: AdamConfig) -> torch.optim.Adam:
    if not cfg.lr > 0:
        raise ValueError(f"learning rate must be > 0, got {cfg.lr}")
    params = list(params)
    # The fused kernel, on CUDA and on CPU: one pass over each parameter's Adam state
    # instead of several elementwise passes (the largest memory traffic of an LC step;
    # on CPU 16.2 → 2.9 ms per SDTP step of iclr_mnist_lc, BENCHMARKS.md). Same update
    # rule; its float32 rounding differs from the foreach path's in the last bits.
    fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
    return torch.optim.Adam(
        param_groups(params, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True if fused else None,
    )


class ParameterSource(Protocol):
    """What `Updater` builds its optimizers from: a `Learner`, or a pipeline stage's share of one."""

    def forward_parameters(self) -> list[nn.Parameter]: ...

    def inverse_parameters(self) -> list[nn.Parameter]: ...


class Updater:
    """Owns the optimizers of a learner and performs one training step."""

    def __init__(self, learner: Learner | ParameterSource, cfg: OptimConfig, grad_sync=None):
        """`grad_sync(params)`, if given, runs between backward and the optimizer steps
        (the trainer passes a cross-rank gradient all-reduce)."""
        self.learner, self.grad_sync = learner, grad_sync
        self.forward = _adam(learner.forward_parameters(), cfg.forward)
        inverse_params = learner.inverse_parameters()
        self.inverse = _adam(inverse_params, cfg.inverse) if inverse_params else None

    def step(self, x: torch.Tensor, y: torch.Tensor, phase: str = "both") -> StepOutput:
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)
        assert isinstance(self.learner, Learner), "step() needs a whole Learner (a pipeline stage steps itself)"
        out = self.learner(x, y, phase=phase)
        out.loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p for opt in self.optimizers() for g in opt.param_groups for p in g["params"]])
        if phase in ("both", "forward"):
            self.forward.step()
        if self.inverse is not None and phase in ("both", "inverse"):
            self.inverse.step()
        return out

    def optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers: list[torch.optim.Optimizer] = [self.forward]
        if self.inverse is not None:
            optimizers.append(self.inverse)
        return optimizers

    def learning_rates(self) -> dict[str, float]:
        lrs = {"forward": self.forward.param_groups[0]["lr"]}
        if self.inverse is not None:
            lrs["inverse"] = self.inverse.param_groups[0]["lr"]
        return lrs

    def state_dict(self) -> dict:
        return {
            "forward": self.forward.state_dict(),
            "inverse": self.inverse.state_dict() if self.inverse is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.forward.load_state_dict(state["forward"])
        if self.inverse is not None:
            self.inverse.load_state_dict(state["inverse"])
