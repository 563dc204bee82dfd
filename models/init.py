"""Weight initialisation shared by every layer type (Glorot & Bengio 2010, as in the paper)."""

from __future__ import annotations

import math

import torch


def glorot_uniform_(tensor: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `tensor` from U(-a, a), a = sqrt(6 / (fan_in + fan_out)).

    Fans are passed explicitly because a locally-connected weight's shape does
    not say which axes are "in" (C·kh·kw) and which are "out" (O·kh·kw)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
