"""The locally-connected kernels of lc_ops.py as autograd Functions, with their gradients
written out rather than traced: PyTorch has no LC layer to differentiate, and writing the
backward is what lets feedback alignment swap the weight used for the input gradient,
Kolen–Pollack hand the weight's gradient to its feedback, the unfold be recomputed instead
of stored, and the weight gradient come out contiguous in the weight's own layout.

- `Unfold` / `Fold`: (H, W, C, N) <-> (L, K, N), each the other's backward.
- `LCLinear` / `LCTransposeLinear`: the layer and its adjoint (the DTP inverse's shape).

Kernels are called through the `lc_ops` module (`lc_ops.unfold_`, ...), so what patches
them there (the bench's profiler labels, tests) reaches these Functions too."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from bioscale.models import lc_native, lc_ops
from bioscale.models.amp import autocast_backward, autocast_forward
from bioscale.models.lc_ops import Geometry


class Unfold(torch.autograd.Function):
    """Autograd unfold (H, W, C, N) -> (L, K, N); backward is `Fold`."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, x, g: Geometry):
        ctx.g, ctx.channels = g, x.shape[2]
        return lc_ops.unfold_(x, g)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        return Fold.apply(grad.contiguous(), ctx.g, ctx.channels), None


class Fold(torch.autograd.Function):
    """Autograd fold (L, K, N) -> (H, W, C, N); backward is `Unfold`."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, cols, g: Geometry, channels: int):
        ctx.g = g
        return lc_ops.fold_(cols, g, channels)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        return Unfold.apply(grad.contiguous(), ctx.g), None, None


def _bias_lo1(bias: torch.Tensor, num_positions: int) -> torch.Tensor:
    """(O, Ho, Wo) -> (L, O, 1) for baddbmm (a copy of O·L numbers)."""
    return bias.reshape(bias.shape[0], num_positions).t().unsqueeze(-1)


class LCLinear(torch.autograd.Function):
    """y = W · unfold(x) + b: (H, W, C, N) -> (Ho, Wo, O, N); weight (L, O, K), bias (O, Ho, Wo).

    With `feedback` (weight-shaped) the input gradient is fold(feedbackᵀ · g)
    and W is not saved, so overwriting W after the forward cannot reach the
    backward (feedback alignment). With `recompute`, x is saved instead of its
    (k/s)²-times larger unfold and backward rebuilds the columns."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, x, weight, bias, feedback, g: Geometry, recompute: bool):
        bias_lo1 = None if bias is None else _bias_lo1(bias, g.num_positions)
        # a trained feedback (Kolen–Pollack) gets the weight's gradient: it needs the columns too
        wants_gw = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        small = not lc_ops.chunk_rows(g, weight.shape[2], x.shape[3], x.element_size())
        if wants_gw and not recompute and small and not lc_native.usable(weight, x):
            cols = lc_ops.unfold_(x, g)  # small enough to keep: saved for the weight gradient
            out = torch.bmm(weight, cols) if bias_lo1 is None else torch.baddbmm(bias_lo1, weight, cols)
        else:
            # Columns too large to keep in cache (or not needed): built chunk by chunk and,
            # if the weight gradient needs them, rebuilt the same way in backward.
            recompute = True
            out = lc_ops.lc_matmul(weight, x, g, bias_lo1)
        ctx.g, ctx.recompute, ctx.has_bias = g, recompute, bias is not None
        ctx.channels, ctx.out_channels = x.shape[2], weight.shape[1]
        # Save only what the requested gradients read: autograd's version check then fires
        # exactly when a tensor the backward uses was modified in place.
        needs_x, needs_w = ctx.needs_input_grad[0], wants_gw
        ctx.save_for_backward(
            (x if recompute else cols) if needs_w else None,
            (weight if feedback is None else feedback) if needs_x else None,
        )
        return out.view(*g.output_size, weight.shape[1], x.shape[3])

    @staticmethod
    @autocast_backward
    @once_differentiable  # the saved columns carry no graph: refuse double backward rather than get it wrong
    def backward(ctx, grad):
        saved, back = ctx.saved_tensors
        g, o = ctx.g, ctx.out_channels
        grad = lc_ops.to_hwcn(grad.permute(3, 2, 0, 1)).view(g.num_positions, o, -1)
        gx = gw = gb = gfb = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            gw = lc_ops.lc_weight_grad(grad, saved, g) if ctx.recompute else torch.bmm(grad, saved.transpose(1, 2))
            if ctx.needs_input_grad[3]:  # Kolen–Pollack: B gets exactly W's gradient (its own tensor)
                gfb = gw.clone() if ctx.needs_input_grad[1] else gw
            if not ctx.needs_input_grad[1]:
                gw = None
        if ctx.needs_input_grad[0]:
            gx = lc_ops.lc_adjoint(back, grad, g, ctx.channels)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(-1).t().reshape(o, *g.output_size)
        return gx, gw, gb, gfb, None, None


class LCTransposeLinear(torch.autograd.Function):
    """x = fold(Wᵀ · y) + c: (Ho, Wo, O, N) -> (H, W, C, N), the adjoint of `LCLinear`; bias (C, H, W).

    The bias preloads the fold's accumulator (saves a pass over the output)."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, y, weight, bias, g: Geometry, channels: int):
        num_pos, o, _ = weight.shape
        n = y.shape[-1]
        y2 = y.view(num_pos, o, n)
        out = lc_ops.lc_adjoint(weight, y2, g, channels, bias_hwc=None if bias is None else bias.permute(1, 2, 0))
        ctx.g, ctx.has_bias = g, bias is not None
        ctx.save_for_backward(y2 if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        return out

    @staticmethod
    @autocast_backward
    @once_differentiable
    def backward(ctx, grad):
        y2, weight = ctx.saved_tensors
        g = ctx.g
        grad = lc_ops.to_hwcn(grad.permute(3, 2, 0, 1))
        gy = gw = gb = None
        both = ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
        if (
            both
            and not lc_ops.chunk_rows(g, weight.shape[2], grad.shape[3], grad.element_size())
            and not (lc_native.usable(weight, grad))
        ):
            gcols = lc_ops.unfold_(grad, g)  # small: one unfold serves both GEMMs
            gy = torch.bmm(weight, gcols).view(*g.output_size, weight.shape[1], -1)
            gw = torch.bmm(y2, gcols.transpose(1, 2))
        else:
            if ctx.needs_input_grad[0]:
                gy = lc_ops.lc_matmul(weight, grad, g).view(*g.output_size, weight.shape[1], -1)
            if ctx.needs_input_grad[1]:
                gw = lc_ops.lc_weight_grad(y2, grad, g)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(-1).permute(2, 0, 1).contiguous()
        return gy, gw, gb, None, None
