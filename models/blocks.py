"""Blocks: a forward function f_l and, for target propagation, its learned inverse g_l.

    hidden block:  f(h) = pool(tanh(layer(h)))      g(h') = tanh(layerᵀ(poolᵀ(h')) + c)
    output block:  f(h) = W·flatten(h) + b (logits)  g(p[, z]) = tanh(V·[p, z] + c)

g maps the block's output space back to its input space (same shape as h_{l-1}).
The output block's inverse reads softmax *probabilities* p (SDTP's top target is
the one-hot label in that space) and, for AO-SDTP, the auxiliary output z.
Learning rules never reach inside a block: they call `forward`, `inverse`,
`aux_output` and read `layer` (the weight-carrying module, for feedback alignment).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bioscale.models.activation import tanh, tanh_
from bioscale.models.conv import Conv2dSame, ConvTranspose2dSame
from bioscale.models.dense import Dense
from bioscale.models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d
from bioscale.models.pooling import AvgPool

Shape = tuple[int, ...]


def tanh_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tanh(a) − tanh(a − b), in float32 at least (float64 stays float64).

    The difference targets' g(u) − g(u − d) with g = tanh(V·u + c): by linearity
    a = V·u + c and b = V·d come from two products, and the cancellation happens here,
    in float32, instead of between two bf16 values of g (where a small d vanishes:
    measured, DTP's signals at α = 1.273e-3 then have cosine 0.009 with float64's;
    BENCHMARKS.md "bf16 difference targets"). Two tanh, as g(u) and g(u − d) were: the
    cancellation-free tanh(b)·(1 − tanh(a)·tanh(a − b)) costs a third tanh and two more
    passes; float32's own cancellation only shows for far smaller d than the configs give
    (BENCHMARKS.md)."""
    wide = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(wide), b.to(wide)
    return tanh(a).sub_(tanh_(torch.sub(a, b)))


class HiddenBlock(nn.Module):
    def __init__(
        self,
        layer: nn.Module,
        in_shape: Shape,
        out_shape: Shape,
        inverse_layer: nn.Module | None = None,
        pool: AvgPool | None = None,
    ):
        super().__init__()
        self.layer, self.inverse_layer, self.pool = layer, inverse_layer, pool
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        # Dense layers read a flat vector; spatial layers read (C, H, W).
        self.flatten_input = isinstance(layer, Dense)

    @property
    def has_inverse(self) -> bool:
        return self.inverse_layer is not None

    def _name(self) -> str:
        return f"{type(self.layer).__name__} block"

    def forward(self, h: torch.Tensor, feedback_weight: torch.Tensor | None = None) -> torch.Tensor:
        x = h.flatten(1) if self.flatten_input else h
        a = tanh(self.layer(x, feedback_weight))
        return self.pool(a) if self.pool is not None else a

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        if self.inverse_layer is None:
            raise RuntimeError(f"{self._name()} was built without an inverse")
        u = self.pool.adjoint(h) if self.pool is not None else h
        return tanh(self.inverse_layer(u)).reshape(-1, *self.in_shape)

    def inverse_difference(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """g(h) − g(h − d) without forming h − d or subtracting two values of g (see
        `tanh_difference`); float32 under bf16 autocast. Two calls of the inverse layer, as
        g(h) and g(h − d) would be (module calls: ZeRO-3 gathers the weights in each)."""
        if self.inverse_layer is None:
            raise RuntimeError(f"{self._name()} was built without an inverse")
        pool = self.pool.adjoint if self.pool is not None else (lambda t: t)
        a = self.inverse_layer(pool(h))
        b = self.inverse_layer(pool(d), add_bias=False)
        return tanh_difference(a, b).reshape(-1, *self.in_shape)


class OutputBlock(nn.Module):
    aux_projection: torch.Tensor  # registered buffer, present when aux_dim > 0

    def __init__(
        self,
        in_shape: Shape,
        num_classes: int,
        with_inverse: bool,
        aux_dim: int = 0,
        aux_seed: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), (int(num_classes),)
        in_features = math.prod(self.in_shape)
        self.layer = Dense(in_features, num_classes, device=device, dtype=dtype)
        self.aux_dim = int(aux_dim)
        if self.aux_dim:
            # AO-SDTP's auxiliary output: a fixed (never trained) random projection of h_{L-1}.
            g = torch.Generator().manual_seed(aux_seed)
            proj = torch.randn(self.aux_dim, in_features, generator=g, dtype=torch.float64) / math.sqrt(in_features)
            self.register_buffer("aux_projection", proj.to(device=device, dtype=dtype or torch.get_default_dtype()))
        self.inverse_layer = (
            Dense(num_classes + self.aux_dim, in_features, device=device, dtype=dtype) if with_inverse else None
        )

    @property
    def has_inverse(self) -> bool:
        return self.inverse_layer is not None

    def forward(self, h: torch.Tensor, feedback_weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.layer(h.flatten(1), feedback_weight)

    def aux_output(self, h: torch.Tensor) -> torch.Tensor:
        if not self.aux_dim:
            raise RuntimeError("output block was built without an auxiliary output (aux_dim=0)")
        return h.flatten(1) @ self.aux_projection.t()

    def inverse(self, p: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if self.inverse_layer is None:
            raise RuntimeError("output block was built without an inverse")
        if (z is None) != (self.aux_dim == 0):
            raise ValueError("the output inverse reads [p, z] exactly when the block has an auxiliary output")
        u = p if z is None else torch.cat([p, z], dim=1)
        return tanh(self.inverse_layer(u)).reshape(-1, *self.in_shape)

    def inverse_difference(self, p: torch.Tensor, d: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """g(p[, z]) − g(p − d[, z]) as `HiddenBlock.inverse_difference` (z is the same in
        both, so it enters only the first product)."""
        if self.inverse_layer is None:
            raise RuntimeError("output block was built without an inverse")
        if (z is None) != (self.aux_dim == 0):
            raise ValueError("the output inverse reads [p, z] exactly when the block has an auxiliary output")
        u, ud = (p, d) if z is None else (torch.cat([p, z], dim=1), torch.cat([d, torch.zeros_like(z)], dim=1))
        a = self.inverse_layer(u)
        b = self.inverse_layer(ud, add_bias=False)
        return tanh_difference(a, b).reshape(-1, *self.in_shape)


def dense_block(in_shape: Shape, units: int, with_inverse: bool, device=None, dtype=None) -> HiddenBlock:
    in_features = math.prod(in_shape)
    layer = Dense(in_features, units, device=device, dtype=dtype)
    inverse = Dense(units, in_features, device=device, dtype=dtype) if with_inverse else None
    return HiddenBlock(layer, in_shape, (units,), inverse)


def spatial_block(
    kind: str,
    in_shape: Shape,
    channels: int,
    kernel: int,
    stride: int,
    padding,
    pool: tuple[int, int] | None,
    with_inverse: bool,
    device=None,
    dtype=None,
) -> HiddenBlock:
    """An LC block (kind='lc') or its weight-shared twin (kind='conv'); pool = (kernel, stride) or None."""
    if len(in_shape) != 3:
        raise ValueError(f"a {kind} block needs a (C, H, W) input, got shape {in_shape}")
    forward_cls, inverse_cls = {
        "lc": (LocallyConnected2d, LocallyConnectedTranspose2d),
        "conv": (Conv2dSame, ConvTranspose2dSame),
    }[kind]
    c, h, w = in_shape
    args = (c, channels, (h, w), kernel, stride, padding)
    layer = forward_cls(*args, device=device, dtype=dtype)
    inverse = inverse_cls(*args, device=device, dtype=dtype) if with_inverse else None
    out_hw = layer.output_size
    pool_mod = AvgPool(channels, out_hw, *pool) if pool else None
    if pool_mod is not None:
        out_hw = pool_mod.output_size
    return HiddenBlock(layer, in_shape, (channels, *out_hw), inverse, pool_mod)
