"""Fully-connected layer with an optional feedback-alignment input gradient."""

from __future__ import annotations

import torch
from torch import nn

from bioscale.models.amp import autocast_backward, autocast_forward
from bioscale.models.init import GlorotInit


class _LinearFeedback(torch.autograd.Function):
    """y = x Wᵀ + b; the input gradient uses B in place of W (feedback alignment).

    W is deliberately not saved: the input gradient must not depend on it."""

    @staticmethod
    @autocast_forward(cast_inputs=True)
    def forward(ctx, x, weight, bias, feedback):
        # a trained feedback (Kolen–Pollack) gets the weight's gradient, so it needs x too;
        # needs_input_grad, not .requires_grad: under autocast this forward sees detached casts
        ctx.save_for_backward(x if ctx.needs_input_grad[1] or ctx.needs_input_grad[3] else None, feedback)
        ctx.has_bias = bias is not None
        out = x @ weight.t()
        return out + bias if bias is not None else out

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        x, feedback = ctx.saved_tensors
        gx = grad @ feedback if ctx.needs_input_grad[0] else None
        gw = grad.t() @ x if ctx.needs_input_grad[1] or ctx.needs_input_grad[3] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        gfb = None
        if ctx.needs_input_grad[3]:  # Kolen–Pollack: B gets exactly W's gradient (its own tensor)
            assert gw is not None
            gfb = gw.clone() if ctx.needs_input_grad[1] else gw
            gw = gw if ctx.needs_input_grad[1] else None
        return gx, gw, gb, gfb


class Dense(GlorotInit, nn.Module):
    """`nn.Linear` with Glorot init and `forward(x, feedback_weight=None)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.fan_in, self.fan_out = self.in_features, self.out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def forward(
        self, x: torch.Tensor, feedback_weight: torch.Tensor | None = None, add_bias: bool = True
    ) -> torch.Tensor:
        """`add_bias=False`: the linear part alone (difference targets use it: blocks.py).
        A callable `feedback_weight` is evaluated on the layer here (`resolve_feedback`)."""
        feedback_weight = self.resolve_feedback(feedback_weight)
        bias = self.bias if add_bias else None
        if feedback_weight is not None:
            return _LinearFeedback.apply(x, self.weight, bias, feedback_weight)
        return nn.functional.linear(x, self.weight, bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
