"""Stop a diverging run early with a message that names the layer and the step.

Every step records, on the device and without a host sync, whether any loss it computed
(the task loss, the per-layer local and inverse losses) was non-finite and the first step
that was (`DivergenceMonitor.record`). The host looks at that flag only at checks — every
`train.log_every_steps`, at angle steps, before every checkpoint and at each epoch end
(`DivergenceMonitor.check`): one sync there, none in between. A check names the first
diverged step and the layer (from the losses and activations of the step being checked),
then scans the weights, so a NaN is never saved over the last good state."""

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
    weights, target gap (local loss) or inverse loss. Syncs with the device."""
    reason = _step_reason(out, module)
    if reason is not None:
        raise DivergenceError(f"diverged at step {step}: {reason}")


def _step_losses(out) -> list[torch.Tensor]:
    losses = [out.task_loss, *out.inverse_losses.values()]
    if out.trace is not None:
        losses += list(out.trace.local_losses.values())
    return losses


def _step_reason(out, module) -> str | None:
    if _bad(out.task_loss):
        return f"task loss is {float(out.task_loss)}" + _first_bad_layer(out, module)
    for l, v in sorted(out.inverse_losses.items()):
        if _bad(v):
            return f"layer {l} inverse loss is {float(v)}"
    if out.trace is not None:
        for l, v in sorted(out.trace.local_losses.items()):
            if _bad(v):
                return f"layer {l} target gap (local loss) is {float(v)}"
    return None


class DivergenceMonitor:
    """Divergence checks that cost no host sync per step: `record(step, out)` after every
    step (a few tiny device kernels), `check(step, out, module)` at log steps, before
    checkpoints and at epoch ends (one sync)."""

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # device int64 scalar: first bad step, -1 = none

    def record(self, step: int, out) -> None:
        losses = torch.stack([v.detach().reshape(()).to(torch.float64) for v in _step_losses(out)])
        finite = torch.isfinite(losses).all()
        if self._first_bad is None or self._first_bad.device != finite.device:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=finite.device)
        self._first_bad = torch.where(finite | (self._first_bad >= 0), self._first_bad, step)

    def flag(self, device: torch.device) -> torch.Tensor:
        """The first recorded step with a non-finite loss as a float64 scalar on `device`
        (−1: none), to be read back together with other statistics in one sync."""
        if self._first_bad is None:
            return torch.full((), -1, dtype=torch.float64, device=device)
        return self._first_bad.to(device, torch.float64)

    def first_bad_step(self) -> int | None:
        """The first recorded step with a non-finite loss (a host sync), or None."""
        if self._first_bad is None:
            return None
        first = int(self._first_bad.item())
        return first if first >= 0 else None

    def check(self, step: int, out=None, module: torch.nn.Module | None = None, flag: float | None = None) -> None:
        """Raise `DivergenceError` if a recorded step had a non-finite loss, naming that
        step and the layer (from `out`, the step being checked, when given), or if a weight
        of `module` holds NaN/inf. `flag`: the value of `flag()` already read back."""
        first = self.first_bad_step() if flag is None else (int(flag) if flag >= 0 else None)
        if first is not None:
            reason = (_step_reason(out, module) if out is not None else None) or (
                _weights_reason(module) if module is not None else None
            )
            if reason is None:
                reason = "a loss was non-finite (every value of the checked step is finite again)"
            when = f"step {first}" if first == step else f"step {first} (found by the check at step {step})"
            raise DivergenceError(f"diverged at {when}: {reason}")
        if module is not None:
            check_weights(step, module)


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


def _weights_reason(module: torch.nn.Module) -> str | None:
    named = list(module.named_parameters())
    if not named:
        return None
    device = named[0][1].device
    # one host sync for all parameters, not one per parameter; a sharded weight (DTensor,
    # the pipeline with zero_stage 3) is checked on this rank's shard
    local = [p.to_local() if hasattr(p, "to_local") else p for _, p in named]
    finite = torch.stack([torch.isfinite(p).all().to(device) for p in local]).tolist()
    for (name, _), ok in zip(named, finite, strict=True):
        if not ok:
            return f"parameter {name} holds NaN/inf"
    return None


def check_weights(step: int, module: torch.nn.Module) -> None:
    reason = _weights_reason(module)
    if reason is not None:
        raise DivergenceError(f"diverged at step {step}: {reason}")
