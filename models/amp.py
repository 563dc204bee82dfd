"""Autocast for the project's custom autograd Functions, on whatever device their tensors live.

`torch.autocast` changes the dtype of the ATen ops it sees, but a custom
`autograd.Function` is opaque to it: its forward sees autocast's state op by op (a
`torch.bmm(..., out=buf)` into a float32 buffer then fails on bf16 inputs), and its
backward runs under whatever autocast state the caller of `.backward()` has — none, in
the standard AMP pattern of backward outside autocast, where the bf16 tensors saved in
the forward then meet float32 weights. `torch.amp.custom_fwd` / `custom_bwd` fix both,
but only for the one `device_type` fixed at decoration; these decorators do the same for
the device of the Function's tensor arguments, so one Function serves CPU autocast (the
test suite's bf16) and CUDA autocast alike.

Two kinds of Function:
- compute Functions (LC, dense and conv kernels): `autocast_forward(cast_inputs=True)`
  casts their floating inputs to the autocast dtype (float64 never: the oracle tests run
  in float64) and runs forward and backward with autocast off, so every kernel sees one
  dtype, like the native ops autocast would have run in bf16;
- boundary Functions (algorithms/feedback.py), whose backward calls modules:
  `autocast_forward()` records autocast's state in the forward and `autocast_backward`
  re-enters it in the backward, so the g_l calls there run as they would in the forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def _device_type(args) -> str:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"


def _cast(value: Any, device_type: str, dtype: torch.dtype) -> Any:
    if (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.device.type == device_type
        and value.dtype not in (dtype, torch.float64)
    ):
        return value.to(dtype)
    return value


def autocast_forward(fwd: Callable | None = None, *, cast_inputs: bool = False) -> Callable:
    """Decorate a custom Function's `forward(ctx, ...)` (under `@staticmethod`).

    cast_inputs=False: record the autocast state (device type, enabled, dtype) on ctx.
    cast_inputs=True: when autocast is on for the tensors' device, cast floating tensor
    arguments to its dtype and run the forward with autocast off (the backward then runs
    with autocast off too)."""
    if fwd is None:
        return functools.partial(autocast_forward, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def forward(ctx, *args, **kwargs):
        device_type = _device_type(args)
        enabled = torch.is_autocast_enabled(device_type)
        ctx.amp_device_type = device_type
        ctx.amp_dtype = torch.get_autocast_dtype(device_type)
        if not (cast_inputs and enabled):
            ctx.amp_enabled = enabled
            return fwd(ctx, *args, **kwargs)
        ctx.amp_enabled = False
        args = tuple(_cast(a, device_type, ctx.amp_dtype) for a in args)
        with torch.autocast(device_type, enabled=False):
            return fwd(ctx, *args, **kwargs)

    return forward


def autocast_backward(bwd: Callable) -> Callable:
    """Decorate the matching `backward(ctx, ...)`: run it under the autocast state its
    forward recorded (off after a casting forward), whatever state the caller has."""

    @functools.wraps(bwd)
    def backward(ctx, *grads):
        with torch.autocast(ctx.amp_device_type, enabled=ctx.amp_enabled, dtype=ctx.amp_dtype):
            return bwd(ctx, *grads)

    return backward
