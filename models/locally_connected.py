"""Locally-connected 2-D layers: a convolution whose filter differs at every output position.

    y[n,o,i,j] = Σ_{c,a,b} W[i,j,o,c,a,b] · xpad[n,c,i·s+a,j·s+b] + bias[o,i,j]

SIMPLE REFERENCE FORM (unfold + bmm). To be replaced by the fast batch-innermost
form (see shared/notes/lc-layer-performance.md); the public interface stays.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.init import glorot_uniform_


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resolve_padding(padding, input_size, kernel_size, stride) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Return ((top, bottom), (left, right), (H_out, W_out)) for 'same' | 'valid' | int | (int, int).

    'same' follows TensorFlow (the paper's framework): out = ceil(in / stride),
    the extra pixel of an odd total padding goes to the bottom/right."""
    pads, outs = [], []
    for n, k, s, i in zip(input_size, kernel_size, stride, range(2)):
        if isinstance(padding, str):
            mode = padding.lower()
            if mode == "same":
                out = math.ceil(n / s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            elif mode == "valid":
                out = (n - k) // s + 1
                pads.append((0, 0))
            else:
                raise ValueError(f"padding must be 'same', 'valid' or an int, got {padding!r}")
        else:
            p = _pair(padding)[i]
            if p < 0:
                raise ValueError(f"padding must be non-negative, got {padding!r}")
            out = (n + 2 * p - k) // s + 1
            pads.append((p, p))
        if out < 1:
            raise ValueError(f"kernel {kernel_size} with stride {stride} and padding {padding!r} "
                             f"does not fit input {tuple(input_size)}")
        outs.append(out)
    return pads[0], pads[1], (outs[0], outs[1])


class _LCGeometry(nn.Module):
    """Shape bookkeeping shared by the layer and its transpose."""

    def _setup(self, in_channels, out_channels, input_size, kernel_size, stride, padding):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size, self.kernel_size, self.stride = _pair(input_size), _pair(kernel_size), _pair(stride)
        self.padding = padding
        self.pad_h, self.pad_w, self.output_size = resolve_padding(padding, self.input_size, self.kernel_size, self.stride)
        kh, kw = self.kernel_size
        self.fan_in = self.in_channels * kh * kw
        self.fan_out = self.out_channels * kh * kw
        self.num_positions = self.output_size[0] * self.output_size[1]

    def weight_shape(self) -> tuple[int, int, int]:
        return (self.num_positions, self.out_channels, self.fan_in)

    def _padded_size(self):
        return (self.input_size[0] + sum(self.pad_h), self.input_size[1] + sum(self.pad_w))

    def _unfold(self, x):  # (N, C, H, W) -> (L, N, K)
        x = F.pad(x, (self.pad_w[0], self.pad_w[1], self.pad_h[0], self.pad_h[1]))
        cols = F.unfold(x, self.kernel_size, stride=self.stride)  # (N, K, L)
        return cols.permute(2, 0, 1)

    def _fold(self, cols):  # (L, N, K) -> (N, C, H, W)
        hp, wp = self._padded_size()
        x = F.fold(cols.permute(1, 2, 0), (hp, wp), self.kernel_size, stride=self.stride)
        return x[:, :, self.pad_h[0]: hp - self.pad_h[1], self.pad_w[0]: wp - self.pad_w[1]]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"output_size={self.output_size}")


class _LCFeedback(torch.autograd.Function):
    """LC forward with W; the input gradient uses a separate feedback weight B (feedback alignment)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer):
        cols = layer._unfold(x)
        ctx.save_for_backward(cols if weight.requires_grad else None, feedback)
        ctx.layer = layer
        out = torch.bmm(cols, weight.transpose(1, 2))  # (L, N, O)
        n = x.shape[0]
        out = out.permute(1, 2, 0).reshape(n, layer.out_channels, *layer.output_size)
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, grad):
        cols, feedback = ctx.saved_tensors
        layer = ctx.layer
        g = grad.reshape(grad.shape[0], layer.out_channels, -1).permute(2, 0, 1)  # (L, N, O)
        gx = layer._fold(torch.bmm(g, feedback)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), cols) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class LocallyConnected2d(_LCGeometry):
    """Untied-weight convolution. Input and output are NCHW.

    Args: in_channels, out_channels, input_size (H, W), kernel_size, stride,
    padding ('same' | 'valid' | int | (int, int)), bias (untied: one per output unit)."""

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1, padding="valid", bias=True,
                 device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.weight = nn.Parameter(torch.empty(self.weight_shape(), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.out_channels, *self.output_size, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        glorot_uniform_(self.weight, self.fan_in, self.fan_out, generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check(self, x):
        expected = (self.in_channels, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expects input (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, feedback_weight: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        if feedback_weight is not None:
            return _LCFeedback.apply(x, self.weight, self.bias, feedback_weight, self)
        out = torch.bmm(self._unfold(x), self.weight.transpose(1, 2))
        out = out.permute(1, 2, 0).reshape(x.shape[0], self.out_channels, *self.output_size)
        return out + self.bias if self.bias is not None else out

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, input_size) -> "LocallyConnected2d":
        """The LC layer whose every position holds `conv`'s kernel (outputs equal the conv's)."""
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1):
            raise ValueError("from_conv2d supports groups=1, dilation=1 convolutions only")
        if conv.padding_mode != "zeros":
            raise ValueError(f"from_conv2d supports zero padding only, got {conv.padding_mode!r}")
        padding = conv.padding if not isinstance(conv.padding, str) else conv.padding
        if padding == "same" and _pair(conv.stride) != (1, 1):
            raise ValueError("nn.Conv2d padding='same' requires stride 1")
        layer = cls(conv.in_channels, conv.out_channels, input_size, conv.kernel_size, conv.stride,
                    padding if isinstance(padding, str) else tuple(padding), bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.reshape(1, conv.out_channels, -1).expand_as(layer.weight))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.view(-1, 1, 1).expand_as(layer.bias))
        return layer

    def transpose(self) -> "LocallyConnectedTranspose2d":
        """The adjoint layer (N, O, Ho, Wo) -> (N, C, H, W) holding a copy of this layer's weight."""
        t = LocallyConnectedTranspose2d(self.in_channels, self.out_channels, self.input_size, self.kernel_size,
                                        self.stride, self.padding, bias=True,
                                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            t.weight.copy_(self.weight)
        return t


class LocallyConnectedTranspose2d(_LCGeometry):
    """The transpose of an LC layer with the same geometry: maps the forward layer's output
    space (N, O, Ho, Wo) back to its input space (N, C, H, W). Its weight has the forward
    layer's weight shape (it is the linear part of a target-propagation inverse g); its bias
    is untied over the input space."""

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1, padding="valid", bias=True,
                 device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.weight = nn.Parameter(torch.empty(self.weight_shape(), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.in_channels, *self.input_size, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # The transpose maps O·k·k-sized neighbourhoods to C-channel pixels: fans swap.
        glorot_uniform_(self.weight, self.fan_out, self.fan_in, generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        expected = (self.out_channels, *self.output_size)
        if y.dim() != 4 or tuple(y.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expects input (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(y.shape)}")
        g = y.reshape(y.shape[0], self.out_channels, -1).permute(2, 0, 1)  # (L, N, O)
        x = self._fold(torch.bmm(g, self.weight))
        return x + self.bias if self.bias is not None else x
