"""½‖a − b‖² summed over every element, as one autograd Function whose gradient keeps a's
memory layout.

Why not `F.mse_loss(reduction="sum")`: its CPU backward allocates the input gradient in
contiguous NCHW order (`zeros_like(..., LEGACY_CONTIGUOUS_MEMORY_FORMAT)`), while LC
activations are NCHW views of (H, W, C, N) memory. Writing one layout while reading the
other walks memory transposed: 11 ms instead of ~0.4 ms for one 128×32×14×14 inverse loss
here, and the NCHW gradient then slows every element-wise backward below it (tanh's:
4.8 vs 0.4 ms) and forces a layout copy at the LC layer (BENCHMARKS.md, "Training step
cost on CPU"). Here the residual d = a − b is formed once, in a's layout, in float32 at
least (under bf16 autocast a and b nearly cancel), saved, and the backward is one
scalar × d."""

from __future__ import annotations

import torch

from bioscale.models.amp import autocast_backward, autocast_forward


class _HalfSquaredError(torch.autograd.Function):
    @staticmethod
    @autocast_forward
    def forward(ctx, a, b):
        wide = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        d = torch.sub(a.to(wide), b.to(wide))
        ctx.save_for_backward(d)
        ctx.dtypes = a.dtype, b.dtype
        return 0.5 * torch.linalg.vector_norm(d).square()

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = (d * grad).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gb = (d * -grad).to(ctx.dtypes[1])
        return ga, gb


def half_squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ ½(a − b)² over all elements (a 0-dim tensor, float32 at least); differentiable in both."""
    return _HalfSquaredError.apply(a, b)
