"""Batch-innermost kernels behind the locally-connected layers.

Layout. Activations are (H, W, C, N), batch innermost, so each pixel is one
contiguous C·N block: an unfold is one copy of a strided view whose inner C·N
blocks move at memcpy speed, a fold is k² strided block adds. Columns are
(Ho, Wo, kh, kw, C, N), seen as (L, K, N) with L = Ho·Wo and K = kh·kw·C
ordered (kh, kw, C). Weights are (L, O, K). Every GEMM is one `torch.bmm` /
`torch.baddbmm` over the L positions; backward GEMMs read transposed views
(BLAS takes them without a copy). Measurements: BENCHMARKS.md.

Pieces:
- `Geometry`: sizes, padding, and per kernel tap the input slice it reads
  (taps reading only padding are skipped by the fold).
- `unfold_` / `fold_`: the raw kernels, each the other's adjoint.
- `Unfold` / `Fold`: the same as autograd Functions, each the other's backward.
- `LCLinear` / `LCTransposeLinear`: the layer and its adjoint with gradients
  written out, so that feedback alignment can swap the weight used for the
  input gradient, the unfold can be recomputed instead of stored, and the weight
  gradient comes out contiguous in the weight's own layout.
- `to_hwcn`: NCHW -> (H, W, C, N) without the slow generic 4-D permute copy.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


class Geometry:
    """Output size, padding and, per kernel tap, the valid output range and the input slice it reads."""

    def __init__(self, input_size, kernel_size, stride, pad_h, pad_w, output_size):
        self.input_size, self.kernel_size, self.stride = tuple(input_size), tuple(kernel_size), tuple(stride)
        self.pad_h, self.pad_w, self.output_size = tuple(pad_h), tuple(pad_w), tuple(output_size)
        self.num_positions = self.output_size[0] * self.output_size[1]
        # (a, b, output slices, input slices) per tap that reads any real input; built once
        # because `fold_` walks it on every call. Taps reading only padding add nothing.
        rows, cols = self._taps(0, self.pad_h[0]), self._taps(1, self.pad_w[0])
        self.blocks = [
            (a, b, (oi, oj), (ii, ij))
            for a, (oi, ii) in enumerate(rows)
            for b, (oj, ij) in enumerate(cols)
            if oi is not None and oj is not None
        ]

    def _taps(self, d: int, pad: int) -> list[tuple[slice, slice] | tuple[None, None]]:
        n_in, n_out, k, s = self.input_size[d], self.output_size[d], self.kernel_size[d], self.stride[d]
        taps: list[tuple[slice, slice] | tuple[None, None]] = []
        for a in range(k):
            # Output i reads input i·s + a - pad; keep the i for which that lies inside the input.
            i0 = max(0, math.ceil((pad - a) / s))
            i1 = min(n_out, (n_in - 1 + pad - a) // s + 1)
            if i1 <= i0:
                taps.append((None, None))
                continue
            r0 = i0 * s + a - pad
            taps.append((slice(i0, i1), slice(r0, r0 + (i1 - i0 - 1) * s + 1, s)))
        return taps


def to_hwcn(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> contiguous (H, W, C, N); free when x already has that memory layout.

    The generic 4-D permute copy runs at ~2 ns/element here; a blocked 2-D
    transpose (N, CHW) -> (CHW, N) followed by a copy of whole N-blocks is 3-5×
    faster. Differentiable: the backward is a view, no copy."""
    hwcn = x.permute(2, 3, 1, 0)
    if hwcn.is_contiguous():
        return hwcn
    n, c, h, w = x.shape
    chwn = x.reshape(n, c * h * w).t().contiguous()
    return chwn.view(c, h * w, n).transpose(0, 1).contiguous().view(h, w, c, n)


def _pad(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """Zero-pad (H, W, C, N) spatially; only the border is zeroed."""
    (pt, pb), (pl, pr) = g.pad_h, g.pad_w
    if not (pt or pb or pl or pr):
        return x.contiguous()
    h, w = x.shape[:2]
    xp = x.new_empty((pt + h + pb, pl + w + pr, *x.shape[2:]))
    for border in (xp[:pt], xp[pt + h :], xp[pt : pt + h, :pl], xp[pt : pt + h, pl + w :]):
        border.zero_()
    xp[pt : pt + h, pl : pl + w].copy_(x)
    return xp


def unfold_(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """(H, W, C, N) -> columns (L, K, N).

    One copy of a strided 6-D view of the padded input, whose two inner dims
    (C, N) are contiguous: 1.3-2× faster than k² per-tap block copies into a
    zeroed buffer (BENCHMARKS.md), and the padded copy is (s/k)² of the columns."""
    xp = _pad(x, g)
    wp, c, n = xp.shape[1:]
    (ho, wo), (kh, kw), (sh, sw) = g.output_size, g.kernel_size, g.stride
    cn = c * n
    view = xp.as_strided((ho, wo, kh, kw, c, n), (sh * wp * cn, sw * cn, wp * cn, cn, n, 1), xp.storage_offset())
    return view.contiguous().view(ho * wo, kh * kw * c, n)


def fold_(cols: torch.Tensor, g: Geometry, channels: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Columns (L, K, N) -> (H, W, C, N), summing overlapping taps: the adjoint of `unfold_`.

    `out`, when given, is accumulated into (the transpose layer preloads its bias there)."""
    (ho, wo), (kh, kw), (h, w) = g.output_size, g.kernel_size, g.input_size
    n = cols.shape[-1]
    cols = cols.view(ho, wo, kh, kw, channels, n)
    if out is None:
        out = cols.new_zeros((h, w, channels, n))
    for a, b, (oi, oj), (ii, ij) in g.blocks:
        out[ii, ij].add_(cols[oi, oj, a, b])
    return out


class Unfold(torch.autograd.Function):
    """Autograd unfold (H, W, C, N) -> (L, K, N); backward is `Fold`."""

    @staticmethod
    def forward(ctx, x, g: Geometry):
        ctx.g, ctx.channels = g, x.shape[2]
        return unfold_(x, g)

    @staticmethod
    def backward(ctx, grad):
        return Fold.apply(grad.contiguous(), ctx.g, ctx.channels), None


class Fold(torch.autograd.Function):
    """Autograd fold (L, K, N) -> (H, W, C, N); backward is `Unfold`."""

    @staticmethod
    def forward(ctx, cols, g: Geometry, channels: int):
        ctx.g = g
        return fold_(cols, g, channels)

    @staticmethod
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
    def forward(ctx, x, weight, bias, feedback, g: Geometry, recompute: bool):
        cols = unfold_(x, g)
        if bias is None:
            out = torch.bmm(weight, cols)
        else:
            out = torch.baddbmm(_bias_lo1(bias, g.num_positions), weight, cols)
        ctx.g, ctx.recompute, ctx.has_bias = g, recompute, bias is not None
        ctx.channels, ctx.out_channels = x.shape[2], weight.shape[1]
        # Save only what the requested gradients read: autograd's version check then fires
        # exactly when a tensor the backward uses was modified in place.
        needs_x, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(
            (x if recompute else cols) if needs_w else None,
            (weight if feedback is None else feedback) if needs_x else None,
        )
        return out.view(*g.output_size, weight.shape[1], x.shape[3])

    @staticmethod
    @once_differentiable  # the saved columns carry no graph: refuse double backward rather than get it wrong
    def backward(ctx, grad):
        saved, back = ctx.saved_tensors
        g, o = ctx.g, ctx.out_channels
        grad = to_hwcn(grad.permute(3, 2, 0, 1)).view(g.num_positions, o, -1)
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            cols = unfold_(saved, g) if ctx.recompute else saved
            gw = torch.bmm(grad, cols.transpose(1, 2))
            del cols  # with recompute, free the columns before the input gradient allocates its own
        if ctx.needs_input_grad[0]:
            gx = fold_(torch.bmm(back.transpose(1, 2), grad), g, ctx.channels)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(-1).t().reshape(o, *g.output_size)
        return gx, gw, gb, None, None, None


class LCTransposeLinear(torch.autograd.Function):
    """x = fold(Wᵀ · y) + c: (Ho, Wo, O, N) -> (H, W, C, N), the adjoint of `LCLinear`; bias (C, H, W).

    The bias preloads the fold's accumulator (saves a pass over the output)."""

    @staticmethod
    def forward(ctx, y, weight, bias, g: Geometry, channels: int):
        num_pos, o, _ = weight.shape
        n = y.shape[-1]
        y2 = y.view(num_pos, o, n)
        acc = None
        if bias is not None:
            h, w = g.input_size
            acc = bias.permute(1, 2, 0).unsqueeze(-1).expand(h, w, channels, n).contiguous()
        out = fold_(torch.bmm(weight.transpose(1, 2), y2), g, channels, out=acc)
        ctx.g, ctx.has_bias = g, bias is not None
        ctx.save_for_backward(y2 if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y2, weight = ctx.saved_tensors
        g = ctx.g
        grad = to_hwcn(grad.permute(3, 2, 0, 1))
        gy = gw = gb = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gcols = unfold_(grad, g)
        if ctx.needs_input_grad[0]:
            gy = torch.bmm(weight, gcols).view(*g.output_size, weight.shape[1], -1)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(y2, gcols.transpose(1, 2))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(-1).permute(2, 0, 1).contiguous()
        return gy, gw, gb, None, None
