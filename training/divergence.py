"""Stop a diverging run early with a message that names the layer and the step.

Checked every step on values already computed (the loss, the per-layer local and
inverse losses); weights are scanned at log steps and before every checkpoint so a
NaN is never saved over the last good state."""

from __future__ import annotations

import math

import torch

from bioscale.data_pipeline.errors import UserError


class DivergenceError(UserError, RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is left untouched."""

    exit_code = 3


def _bad(value) -> bool:
    return not math.isfinite(float(value))


def check_step(step: int, out, module: torch.nn.Module | None = None) -> None:
    """Raise `DivergenceError` naming the first non-finite layer: its activations,
    weights, target gap (local loss) or inverse loss."""
    if _bad(out.task_loss):
        where = _first_bad_layer(out, module)
        raise DivergenceError(f"diverged at step {step}: task loss is {float(out.task_loss)}" + where)
    for l, v in sorted(out.inverse_losses.items()):
        if _bad(v):
            raise DivergenceError(f"diverged at step {step}: layer {l} inverse loss is {float(v)}")
    if out.trace is not None:
        for l, v in sorted(out.trace.local_losses.items()):
            if _bad(v):
                raise DivergenceError(f"diverged at step {step}: layer {l} target gap (local loss) is {float(v)}")


def _first_bad_layer(out, module) -> str:
    for l, h in enumerate(out.hidden, 1):
        if not torch.isfinite(h.detach()).all():
            return f"; first non-finite activations at layer {l}"
    if not torch.isfinite(out.logits).all():
        return f"; first non-finite activations at layer {len(out.hidden) + 1} (the output layer's logits)"
    if module is not None:
        for name, p in module.named_parameters():
            if not torch.isfinite(p).all():
                return f"; parameter {name} holds NaN/inf"
    return "; every layer's activations are finite: the loss itself overflowed"


def check_weights(step: int, module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"diverged at step {step}: parameter {name} holds NaN/inf")
