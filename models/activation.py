"""tanh, the nonlinearity of every block and of the difference targets.

Why not `torch.tanh` on CPU: PyTorch's CPU tanh (and expm1) for float32/float64 is MKL's
VML, which on non-Intel CPUs takes a generic path. Measured on the AMD EPYC dev VM (one
thread, 128×32×14×14 float32): `torch.tanh` 2.0-2.6 ms, numpy's SIMD `np.tanh` 0.29 ms,
`torch.sigmoid` 0.35 ms; tanh was ~20 % of an SDTP step of `iclr_mnist_lc` there
(BENCHMARKS.md "Round 4"). numpy's tanh is within 1.4 ulp in float32 (torch's: 0.5) and
2.2e-16 relative in float64, over N(0, s²) inputs for s from 1e-6 to 10.

So on CPU, for float32/float64, the forward runs numpy's kernel on the tensor's own
memory (its output keeps the input's memory layout: the LC layers' batch-innermost
activations stay batch-innermost) and the backward is `tanh_backward` on the saved
output, exactly what autograd does for `torch.tanh` (differentiable, so double backward
works). Everything else — CUDA, bf16/fp16 (autocast's outputs), meta — is `torch.tanh`.
numpy's tanh runs on one thread: where PyTorch would spread tanh over many intra-op
threads on a large CPU machine, this is slower per call; the training step's GEMMs still
use every thread.
"""

from __future__ import annotations

import numpy as np
import torch


def _numpy_path(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.layout == torch.strided


def _numpy_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.tanh(x.detach().numpy()))


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = _numpy_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """`torch.tanh(x)`, on CPU float32/float64 through numpy's SIMD kernel (module docstring)."""
    if not _numpy_path(x):
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _Tanh.apply(x)
    return _numpy_tanh(x)


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place `tanh`, for tensors no autograd graph reads (the caller's temporaries)."""
    if not _numpy_path(x) or (x.requires_grad and torch.is_grad_enabled()):
        return x.tanh_()
    arr = x.detach().numpy()
    np.tanh(arr, out=arr)
    return x
