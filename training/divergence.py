"""Stop a diverging run early with a message that names the layer and the step.

Checked every step on values already computed (the loss, the per-layer local and
inverse losses); weights are scanned at log steps and before every checkpoint so a
NaN is never saved over the last good state."""

from __future__ import annotations

import math

import torch


class DivergenceError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is left untouched."""


def _bad(value) -> bool:
    return not math.isfinite(float(value))


def check_step(step: int, out) -> None:
    if _bad(out.task_loss):
        raise DivergenceError(f"diverged at step {step}: task loss is {float(out.task_loss)}")
    for l, v in sorted(out.inverse_losses.items()):
        if _bad(v):
            raise DivergenceError(f"diverged at step {step}: layer {l} inverse loss is {float(v)}")
    if out.trace is not None:
        for l, v in sorted(out.trace.local_losses.items()):
            if _bad(v):
                raise DivergenceError(f"diverged at step {step}: layer {l} target gap (local loss) is {float(v)}")


def check_weights(step: int, module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"diverged at step {step}: parameter {name} holds NaN/inf")
