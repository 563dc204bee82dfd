"""Weight-shared twins of the LC layers: a convolution with the paper's (TensorFlow)
padding rules, its transpose, and a feedback-alignment input gradient.

`nn.Conv2d` cannot express TensorFlow's asymmetric SAME padding for even
kernels or strides > 1, so the padding is applied explicitly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

from bioscale.models.amp import autocast_backward, autocast_forward
from bioscale.models.geometry import SlidingWindow
from bioscale.models.init import GlorotInit


class _ConvGeometry(SlidingWindow):
    """Explicit (possibly asymmetric) padding and the adjoint, shared by the conv and its transpose."""

    def _pad(self, x):
        return F.pad(x, (self.pad_w[0], self.pad_w[1], self.pad_h[0], self.pad_h[1]))

    def _adjoint(self, y, weight):
        """Adjoint of `conv(pad(x), weight)` w.r.t. x: transposed conv, then drop the padding."""
        hp = self.input_size[0] + sum(self.pad_h)
        wp = self.input_size[1] + sum(self.pad_w)
        full_h = (self.output_size[0] - 1) * self.stride[0] + self.kernel_size[0]
        full_w = (self.output_size[1] - 1) * self.stride[1] + self.kernel_size[1]
        x = F.conv_transpose2d(y, weight, stride=self.stride, output_padding=0)
        # Rows/cols of the padded input that no window touches get zero gradient.
        x = F.pad(x, (0, wp - full_w, 0, hp - full_h))
        return x[:, :, self.pad_h[0] : hp - self.pad_h[1], self.pad_w[0] : wp - self.pad_w[1]]


class _ConvFeedback(torch.autograd.Function):
    """Convolution with W forward; input gradient through the transpose with B."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, x, weight, bias, feedback, layer):
        xp = layer._pad(x)
        # a trained feedback (Kolen–Pollack) gets the weight's gradient, so it needs xp too;
        # needs_input_grad, not .requires_grad: under autocast this forward sees detached casts
        ctx.save_for_backward(xp if ctx.needs_input_grad[1] or ctx.needs_input_grad[3] else None, feedback)
        ctx.layer, ctx.weight_shape = layer, weight.shape
        return F.conv2d(xp, weight, bias, stride=layer.stride)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        xp, feedback = ctx.saved_tensors
        layer = ctx.layer
        gx = layer._adjoint(grad, feedback) if ctx.needs_input_grad[0] else None
        gw = (
            torch.nn.grad.conv2d_weight(xp, ctx.weight_shape, grad, stride=layer.stride)
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
            else None
        )
        gb = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        gfb = None
        if ctx.needs_input_grad[3]:  # Kolen–Pollack: B gets exactly W's gradient (its own tensor)
            assert gw is not None
            gfb = gw.clone() if ctx.needs_input_grad[1] else gw
            gw = gw if ctx.needs_input_grad[1] else None
        return gx, gw, gb, gfb, None


class Conv2dSame(GlorotInit, _ConvGeometry):
    """Convolution with the LC layer's constructor and padding semantics (weights shared)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        input_size,
        kernel_size,
        stride=1,
        padding="valid",
        bias=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def forward(self, x: torch.Tensor, feedback_weight=None) -> torch.Tensor:
        feedback_weight = self.resolve_feedback(feedback_weight)  # a callable: evaluated on the layer here
        if feedback_weight is not None:
            return _ConvFeedback.apply(x, self.weight, self.bias, feedback_weight, self)
        return F.conv2d(self._pad(x), self.weight, self.bias, stride=self.stride)


class ConvTranspose2dSame(GlorotInit, _ConvGeometry):
    """Transpose of `Conv2dSame` (output space → input space), bias shared per input channel."""

    transposed = True  # maps the output space back to the input space: fans swap

    def __init__(
        self,
        in_channels,
        out_channels,
        input_size,
        kernel_size,
        stride=1,
        padding="valid",
        bias=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.zeros(in_channels, 1, 1, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def forward(self, y: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """`add_bias=False`: the linear part alone (difference targets use it: blocks.py)."""
        x = self._adjoint(y, self.weight)
        return x + self.bias if self.bias is not None and add_bias else x
