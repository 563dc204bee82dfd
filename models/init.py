"""Weight initialisation shared by every layer type (Glorot & Bengio 2010, as in the paper)."""

from __future__ import annotations

import math

import torch
from torch import nn


def glorot_uniform_(
    tensor: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill `tensor` from U(-a, a), a = sqrt(6 / (fan_in + fan_out)).

    Fans are passed explicitly because a locally-connected weight's shape does
    not say which axes are "in" (C·kh·kw) and which are "out" (O·kh·kw)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


class GlorotInit:
    """`reset_parameters` for every weight layer here: Glorot-uniform weight (fans from the
    layer's `fan_in` / `fan_out`), zero bias. A transpose layer maps the output space back
    to the input space, so its fans swap (`transposed = True`)."""

    transposed = False
    # provided by the layer class this is mixed into
    fan_in: int
    fan_out: int
    weight: nn.Parameter
    bias: nn.Parameter | None

    def resolve_feedback(self, feedback_weight):
        """A callable `feedback_weight` is called with this layer, here, inside the layer's
        own module call, and its result used as the feedback matrix; anything else is used as
        given. Rules whose feedback is made from the layer's parameters (KP's trained B,
        sign-symmetry's s·sign(W)) pass one: under ZeRO-3 the parameters are gathered only
        inside the module call, and a parameter passed as a module *input* would have its
        gradient pass DeepSpeed's post-backward hook, which re-partitions the layer before
        that gradient is accumulated."""
        return feedback_weight(self) if callable(feedback_weight) else feedback_weight

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        fan_in, fan_out = (self.fan_out, self.fan_in) if self.transposed else (self.fan_in, self.fan_out)
        glorot_uniform_(self.weight, fan_in, fan_out, generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
