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
- `lc_matmul` / `lc_weight_grad` / `lc_adjoint`: the layer's three GEMMs (native
  kernels from lc_native where usable, chunked when the columns outgrow the cache).
  The autograd Functions built on them are in lc_functions.py.
- `to_hwcn`: NCHW -> (H, W, C, N) without the slow generic 4-D permute copy.
"""

from __future__ import annotations

import math

import torch

from bioscale.models import lc_native


class Geometry:
    """Output size, padding and, per kernel tap, the valid output range and the input slice it reads."""

    def __init__(self, input_size, kernel_size, stride, pad_h, pad_w, output_size):
        self.input_size, self.kernel_size, self.stride = tuple(input_size), tuple(kernel_size), tuple(stride)
        self.pad_h, self.pad_w, self.output_size = tuple(pad_h), tuple(pad_w), tuple(output_size)
        self.num_positions = self.output_size[0] * self.output_size[1]
        # (a, b, output slices, input slices) per tap that reads any real input; built once
        # because `fold_` walks it on every call. Taps reading only padding add nothing.
        rows, cols = self._taps(0, self.pad_h[0]), self._taps(1, self.pad_w[0])
        self.blocks: list[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]] = [
            (a, b, (oi, oj), (ii, ij))  # type: ignore[misc]  # None entries are filtered below
            for a, (oi, ii) in enumerate(rows)
            for b, (oj, ij) in enumerate(cols)
            if oi is not None and oj is not None
        ]
        # `lc_adjoint`'s GEMMs, per output row i and tap (a, b) reading real input:
        # (first input pixel h·W + w it writes, how many output columns m, first output
        # position i·Wo + j, tap index a·kw + b); its slices are strided by s_w pixels.
        (ho, wo), w_in, kw = self.output_size, self.input_size[1], self.kernel_size[1]
        self.adjoint_plan: list[tuple[int, int, int, int]] = [
            (
                (ii.start + (i - oi.start) * self.stride[0]) * w_in + ij.start,
                oj.stop - oj.start,
                i * wo + oj.start,
                a * kw + b,
            )
            for i in range(ho)
            for a, b, (oi, oj), (ii, ij) in self.blocks
            if oi.start <= i < oi.stop
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


CHUNK_BYTES = 1 << 19
"""Column bytes per chunk in the chunked kernels below: small enough that a chunk of columns
stays in this CPU's 2 MiB per-core L2 between the copy that writes it and the GEMM that
reads it (0.25-1 MiB measured alike, 2 MiB slower; BENCHMARKS.md, "Training step cost on
CPU"). Layers whose columns fit in two chunks use the one-shot kernels."""


def chunk_rows(g: Geometry, k: int, n: int, itemsize: int) -> int:
    """Output rows per chunk, or 0 when the whole column tensor fits in two chunks (then the
    one-shot kernels are as fast and issue fewer calls)."""
    row_bytes = g.output_size[1] * k * n * itemsize
    if g.output_size[0] * row_bytes <= 2 * CHUNK_BYTES:
        return 0
    return max(1, CHUNK_BYTES // row_bytes)


def _unfold_rows_view(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """The (Ho, Wo, kh, kw, C, N) strided view of the padded input that `unfold_` copies."""
    xp = _pad(x, g)
    wp, c, n = xp.shape[1:]
    (ho, wo), (kh, kw), (sh, sw) = g.output_size, g.kernel_size, g.stride
    cn = c * n
    return xp.as_strided((ho, wo, kh, kw, c, n), (sh * wp * cn, sw * cn, wp * cn, cn, n, 1), xp.storage_offset())


def _strip_path(x: torch.Tensor) -> bool:
    """Whether the large-layer kernels use row strips (below) rather than chunked columns.

    Strips accumulate a position's kh partial products in the output's dtype, so they are
    taken for float32/float64 only: in bf16 each partial sum would round to bf16 (the
    column GEMM accumulates in float32 inside). CPU only: measured here, not on a GPU."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _strip(xp: torch.Tensor, g: Geometry, row: int, transpose: bool = False) -> torch.Tensor:
    """The kh-th-tap row strips of one input row of padded x: (Wo, kw·C, N) (or its (Wo, N,
    kw·C) transpose), a view. For output (i, j) and kernel row a, the (a, ·, ·) slice of
    its columns is kw consecutive pixels of input row i·s + a — kw·C·N contiguous numbers —
    so a strip is a matrix BLAS reads in place; strips of neighbouring j overlap."""
    wp, c, n = xp.shape[1:]
    kc, cn = g.kernel_size[1] * c, c * n
    offset = xp.storage_offset() + row * wp * cn
    if transpose:
        return xp.as_strided((g.output_size[1], n, kc), (g.stride[1] * cn, 1, n), offset)
    return xp.as_strided((g.output_size[1], kc, n), (g.stride[1] * cn, n, 1), offset)


def lc_matmul(weight: torch.Tensor, x: torch.Tensor, g: Geometry, bias_lo1: torch.Tensor | None = None):
    """W · unfold(x) (+ bias as (L, O, 1)): (L, O, K), (H, W, C, N) -> (L, O, N).

    Large layers never write their columns ((k/s)² copies of x: 29 MB for
    `iclr_mnist_lc`'s second layer at batch 128). In float32/64 on CPU, per output row i
    and kernel row a one GEMM batch over j reads the weight's (a, ·, ·) slice and the
    input row strip in place (`_strip`): Ho·kh GEMMs, no copies, 1.3-1.9× faster than the
    chunked columns on that net's layers 2-4 (BENCHMARKS.md). Otherwise the columns are
    built a few output rows at a time into one reused buffer that stays in cache: the same
    GEMMs as `bmm(W, unfold_(x))`, bit-identical. On CPU in float32/64, the native kernel
    (`lc_native`) instead, at any size."""
    n = x.shape[-1]
    num_pos, o, k = weight.shape
    if lc_native.usable(weight, x):
        return lc_native.forward(weight, x, g, None if bias_lo1 is None else bias_lo1.reshape(num_pos, o))
    rows = chunk_rows(g, k, n, x.element_size())
    if not rows:
        cols = unfold_(x, g)
        return torch.bmm(weight, cols) if bias_lo1 is None else torch.baddbmm(bias_lo1, weight, cols)
    (ho, wo), kh, sh = g.output_size, g.kernel_size[0], g.stride[0]
    if _strip_path(x):
        xp, kc = _pad(x, g), k // kh
        out = x.new_empty((ho, wo, o, n))
        w4 = weight.view(ho, wo, o, k)
        b4 = None if bias_lo1 is None else bias_lo1.view(ho, wo, o, 1)
        for i in range(ho):
            for a in range(kh):
                w_a, strip = w4[i, :, :, a * kc : (a + 1) * kc], _strip(xp, g, i * sh + a)
                if a:
                    out[i].baddbmm_(w_a, strip)
                elif b4 is None:
                    torch.bmm(w_a, strip, out=out[i])
                else:
                    torch.baddbmm(b4[i], w_a, strip, out=out[i])
        return out.view(num_pos, o, n)
    view = _unfold_rows_view(x, g)
    out = x.new_empty((num_pos, o, n))
    buf = x.new_empty(rows * wo * k * n)
    for i0 in range(0, ho, rows):
        i1 = min(ho, i0 + rows)
        l0, l1 = i0 * wo, i1 * wo
        cols = buf[: (l1 - l0) * k * n].view(i1 - i0, *view.shape[1:])
        cols.copy_(view[i0:i1])
        cols = cols.view(l1 - l0, k, n)
        if bias_lo1 is None:
            torch.bmm(weight[l0:l1], cols, out=out[l0:l1])
        else:
            torch.baddbmm(bias_lo1[l0:l1], weight[l0:l1], cols, out=out[l0:l1])
    return out


def lc_weight_grad(grad: torch.Tensor, x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """grad · unfold(x)ᵀ: (L, O, N), (H, W, C, N) -> (L, O, K), for large layers without
    columns like `lc_matmul`. Strips: each (i, a) GEMM batch writes a contiguous (Wo, O,
    kw·C) block of a (Ho, kh, Wo, O, kw·C) buffer, permuted into the weight's layout by
    one copy at the end (GEMMs writing straight into the strided weight-shaped view go
    through a temporary inside ATen: slower than the chunked columns). Chunked columns
    otherwise, bit-identical to `bmm(grad, unfold_(x).transpose(1, 2))`. The native kernel
    when `lc_native` takes the operands and the layer (`takes_weight_grad`)."""
    if lc_native.takes_weight_grad(grad, x, g):
        return lc_native.weight_grad(grad, x, g)
    num_pos, o, n = grad.shape
    k = g.kernel_size[0] * g.kernel_size[1] * x.shape[2]
    rows = chunk_rows(g, k, n, x.element_size())
    if not rows:
        return torch.bmm(grad, unfold_(x, g).transpose(1, 2))
    (ho, wo), kh, sh = g.output_size, g.kernel_size[0], g.stride[0]
    if _strip_path(x):
        xp, kc = _pad(x, g), k // kh
        blocks = grad.new_empty((ho, kh, wo, o, kc))
        g4 = grad.view(ho, wo, o, n)
        for i in range(ho):
            for a in range(kh):
                torch.bmm(g4[i], _strip(xp, g, i * sh + a, transpose=True), out=blocks[i, a])
        return blocks.permute(0, 2, 3, 1, 4).reshape(num_pos, o, k)
    view = _unfold_rows_view(x, g)
    out = grad.new_empty((num_pos, o, k))
    buf = x.new_empty(rows * wo * k * n)
    for i0 in range(0, ho, rows):
        i1 = min(ho, i0 + rows)
        l0, l1 = i0 * wo, i1 * wo
        cols = buf[: (l1 - l0) * k * n].view(i1 - i0, *view.shape[1:])
        cols.copy_(view[i0:i1])
        torch.bmm(grad[l0:l1], cols.view(l1 - l0, k, n).transpose(1, 2), out=out[l0:l1])
    return out


def lc_adjoint(
    weight: torch.Tensor,
    y: torch.Tensor,
    g: Geometry,
    channels: int,
    out: torch.Tensor | None = None,
    bias_hwc: torch.Tensor | None = None,
) -> torch.Tensor:
    """fold(Wᵀ · y): (L, O, K), (L, O, N) -> (H, W, C, N), accumulated into `out` when given.

    For large layers no columns at all: per output row and kernel tap one in-place
    `baddbmm_` adds (W_tap)ᵀ · y of that row straight into the input-space rows it reads
    (Ho·k² small GEMMs instead of writing and re-reading the (k/s)²-times larger
    Wᵀ·y). The same products as `fold_(bmm(Wᵀ, y))`, taps summed in the same order;
    the GEMM's accumulation into the output may round differently. The native kernel when
    `lc_native` takes the operands (gathered per input pixel: each output written once; the
    bias, as (H, W, C), starts its accumulators)."""
    if lc_native.usable(weight, y) and (out is None or out.is_contiguous()):
        return lc_native.adjoint(weight, y, g, channels, out=out, bias_hwc=bias_hwc)
    num_pos, o, k = weight.shape
    n = y.shape[-1]
    if bias_hwc is not None:  # preloads the accumulator (saves a pass over the output)
        bias_hwcn = bias_hwc.unsqueeze(-1).expand(*g.input_size, channels, n)
        out = bias_hwcn.contiguous() if out is None else out.add_(bias_hwcn)
    if not chunk_rows(g, k, n, y.element_size()):
        return fold_(torch.bmm(weight.transpose(1, 2), y), g, channels, out=out)
    if out is None:
        out = y.new_zeros((*g.input_size, channels, n))
    assert out.is_contiguous(), "lc_adjoint accumulates into a contiguous (H, W, C, N) tensor"
    # Each operand as one precomputed `as_strided` (Geometry.adjoint_plan): the slicing that
    # spells the same views costs ~8 view ops per GEMM, 30% of the kernel in Python.
    weight, y = weight.contiguous(), y.contiguous()
    cn, ok, on, step = channels * n, o * k, o * n, g.stride[1] * channels * n
    wb, yb, ob = weight.storage_offset(), y.storage_offset(), out.storage_offset()
    for pixel, m, position, tap in g.adjoint_plan:
        out.as_strided((m, channels, n), (step, n, 1), ob + pixel * cn).baddbmm_(
            weight.as_strided((m, channels, o), (ok, 1, k), wb + position * ok + tap * channels),
            y.as_strided((m, o, n), (on, n, 1), yb + position * on),
        )
    return out
