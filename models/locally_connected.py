"""Locally-connected 2-D layers: a convolution whose filter differs at every output position.

    y[n,o,i,j] = Σ_{a,b,c} W[i·Wo+j, o, (a,b,c)] · xpad[n,c,i·s+a,j·s+b] + bias[o,i,j]

Interface: NCHW in and out (shapes). Memory layout, which is what makes the
layer fast on a CPU (measured in BENCHMARKS.md):

- Outputs are NCHW-*shaped* views of batch-innermost (H, W, C, N) memory, the
  way `channels_last` tensors are NCHW-shaped. Element-wise ops (tanh, noise
  from `randn_like`, `h - lr * grad`) keep that layout, so a chain
  LC -> tanh -> LC never permutes. An input with standard NCHW strides is
  converted once (`lc_ops.to_hwcn`). Use `.reshape`/`.flatten`, not `.view`,
  on outputs; `.contiguous()` works but costs a slow 4-D permute copy.
  Per-channel spatial ops (average pooling) should not see the odd strides
  (F.avg_pool2d then copies at ~2 ns/element): the same memory viewed as
  `h.permute(2, 3, 1, 0).reshape(1, H, W, C*N).permute(0, 3, 1, 2)` is a
  channels_last image, pooled 30× faster, and the result is again (H', W', C, N).
- `weight` is (L, O, K): L = Ho·Wo positions in row-major order, K = kh·kw·C
  ordered (kh, kw, C). So `weight[i*Wo + j, o].view(kh, kw, C)` is the filter of
  output unit (o, i, j), and `weight[l, o].view(kh, kw, C).permute(2, 0, 1)`
  is in `nn.Conv2d` order (see `from_conv2d`).
- `bias` is (O, Ho, Wo) for the layer, (C, H, W) for the transpose (untied).

Kernels and the autograd Functions live in `models/lc_ops.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from bioscale.models.geometry import SlidingWindow, pair
from bioscale.models.init import GlorotInit
from bioscale.models.lc_functions import LCLinear, LCTransposeLinear
from bioscale.models.lc_ops import Geometry, to_hwcn


def _mean_keep(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean over `dims` (kept), accumulated in float32 at least (bf16 weights)."""
    wide = torch.promote_types(t.dtype, torch.float32)
    return t.mean(dims, keepdim=True, dtype=wide).to(t.dtype)


class _LCGeometry(SlidingWindow):
    """Shape bookkeeping and checks shared by the layer and its transpose."""

    def _setup(self, in_channels, out_channels, input_size, kernel_size, stride, padding):
        super()._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.num_positions = self.output_size[0] * self.output_size[1]
        self.geometry = Geometry(
            self.input_size, self.kernel_size, self.stride, self.pad_h, self.pad_w, self.output_size
        )

    def weight_shape(self) -> tuple[int, int, int]:
        return (self.num_positions, self.out_channels, self.fan_in)

    def share_weights_(self) -> None:
        """Instant weight sharing (the "sleep phase" of Pogodin et al. 2021, done exactly):
        every position's filter becomes the average over all Ho·Wo positions, separately for
        each (out-channel, kernel-tap) slot: weight[l, o, k] ← mean_l' weight[l', o, k]. The
        untied bias is averaged over positions per channel, so afterwards the layer computes
        a convolution (with its own padding rules) and the transpose a transposed
        convolution with a per-channel bias. A weight-shaped trained feedback matrix on the
        layer (`feedback_weight`, Kolen–Pollack's B) is averaged the same way. Taps of
        border positions that read only padding are included in the average (a conv shares
        them too). Positions stay untied: training moves them apart again until the next
        call. In place, without autograd; under ZeRO-3 call it inside a gather of the
        layer's parameters (training/weight_sharing.py)."""
        self._set_every_position(lambda t, dims: _mean_keep(t, dims))

    def hebbian_share_(self, rate: float, iterations: int, generator: torch.Generator) -> None:
        """Dynamic weight sharing (Pogodin et al. 2021's sleep phase as the SGD their
        lateral dynamics implement): `iterations` times, every position receives the same
        K = fan-in random inputs x_1..x_K ~ N(0, I) (one (K, K) draw from `generator`), each
        filter's responses y_l = W_l·x_m are compared with their mean over positions, and
        W_l ← W_l − (γ/K)·Σ_m (y_l − ȳ)(x_m)ᵀ — an anti-Hebbian step on ½Σ_l (y_l − ȳ)²,
        per out-channel, whose expectation is W_l ← W_l − γ(W_l − W̄). The mean filter is
        unchanged exactly (the deviations sum to zero over positions); the spread shrinks
        by about (1 − γ)² + γ² in squared norm per iteration. A KP layer's trained feedback
        is shared the same way with the same inputs. Biases, whose input is the constant 1,
        take their step's expectation b ← b − γ(b − b̄) (their share of y_l − ȳ that comes
        from W·x averages out). Gradient-free, in place; under ZeRO-3 inside a gather, like
        `share_weights_`."""
        with torch.no_grad():
            k = self.fan_in
            for _ in range(iterations):
                x = torch.randn(k, k, generator=generator, dtype=torch.float64)
                for name in ("weight", "feedback_weight"):
                    p = getattr(self, name, None)
                    if isinstance(p, torch.Tensor):
                        xp = x.to(device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
                        y = torch.matmul(p.to(xp.dtype), xp)  # (L, O, K) responses
                        y -= y.mean(0, keepdim=True)
                        p.sub_(torch.matmul(y, xp.t()).mul_(rate / k).to(p.dtype))
                bias = getattr(self, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.sub_((bias - _mean_keep(bias, (1, 2))).mul_(rate))

    def tie_weights_(self) -> None:
        """Copy position 0's filter (and bias) to every position: the tied start that
        weight sharing needs. Averaging *independent* random filters over Ho·Wo positions
        would shrink them by ~sqrt(Ho·Wo) (measured: BP on iclr_mnist_lc sharing every 10
        steps from an untied init stays near chance on Fashion-MNIST), while position 0's
        filter has the layer's Glorot scale, as a convolution's does."""
        self._set_every_position(
            lambda t, dims: t[tuple(slice(0, 1) if d in dims else slice(None) for d in range(t.dim()))]
        )

    def _set_every_position(self, pick) -> None:
        with torch.no_grad():
            for name in ("weight", "feedback_weight"):
                p = getattr(self, name, None)
                if isinstance(p, torch.Tensor):
                    p.copy_(pick(p, (0,)).expand_as(p))
            bias = getattr(self, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(pick(bias, (1, 2)).expand_as(bias))

    def _check(self, x: torch.Tensor, channels: int, size: tuple[int, int]) -> None:
        expected = (channels, *size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects input (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )


class LocallyConnected2d(GlorotInit, _LCGeometry):
    """Untied-weight convolution (N, C, H, W) -> (N, O, Ho, Wo).

    Args: in_channels, out_channels, input_size (H, W), kernel_size, stride,
    padding ('same' | 'valid' | int | (int, int)), bias (untied: one per output
    unit). `recompute_unfold` (keyword): save the input instead of its (k/s)²
    times larger unfold and rebuild the columns in backward. The input is
    usually alive anyway (tanh saves its output), so this makes the layer's
    extra activation memory zero; it costs one more unfold per step (~6% of
    the CIFAR net's step here), hence off by default."""

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
        *,
        recompute_unfold: bool = False,
    ):
        super().__init__()
        self._setup(in_channels, out_channels, input_size, kernel_size, stride, padding)
        self.recompute_unfold = recompute_unfold
        self.weight = nn.Parameter(torch.empty(self.weight_shape(), device=device, dtype=dtype))
        self.bias = (
            nn.Parameter(torch.zeros(self.out_channels, *self.output_size, device=device, dtype=dtype))
            if bias
            else None
        )
        self.reset_parameters()

    def forward(self, x: torch.Tensor, feedback_weight=None) -> torch.Tensor:
        """With `feedback_weight` (weight-shaped) the input gradient uses it instead of `weight`;
        a callable is evaluated on the layer inside this call (`resolve_feedback`: KP, signsym)."""
        self._check(x, self.in_channels, self.input_size)
        feedback_weight = self.resolve_feedback(feedback_weight)
        if feedback_weight is not None and feedback_weight.shape != self.weight.shape:
            raise ValueError(
                f"feedback_weight must have the weight's shape {tuple(self.weight.shape)}, "
                f"got {tuple(feedback_weight.shape)}"
            )
        out = LCLinear.apply(to_hwcn(x), self.weight, self.bias, feedback_weight, self.geometry, self.recompute_unfold)
        return out.permute(3, 2, 0, 1)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, input_size) -> LocallyConnected2d:
        """The LC layer whose every position holds `conv`'s kernel (outputs equal the conv's)."""
        if conv.groups != 1 or pair(conv.dilation) != (1, 1):
            raise ValueError("from_conv2d supports groups=1, dilation=1 convolutions only")
        if conv.padding_mode != "zeros":
            raise ValueError(f"from_conv2d supports zero padding only, got {conv.padding_mode!r}")
        padding = conv.padding
        if padding == "same" and pair(conv.stride) != (1, 1):
            raise ValueError("nn.Conv2d padding='same' requires stride 1")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            input_size,
            conv.kernel_size,
            conv.stride,
            padding if isinstance(padding, str) else tuple(padding),
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            kernel = conv.weight.permute(0, 2, 3, 1).reshape(1, conv.out_channels, -1)  # K in (kh, kw, C) order
            layer.weight.copy_(kernel.expand_as(layer.weight))
            if conv.bias is not None:
                assert layer.bias is not None  # built with bias=True above
                layer.bias.copy_(conv.bias.view(-1, 1, 1).expand_as(layer.bias))
        return layer

    def transpose(self) -> LocallyConnectedTranspose2d:
        """The adjoint layer (N, O, Ho, Wo) -> (N, C, H, W) holding a copy of this layer's weight."""
        t = LocallyConnectedTranspose2d(
            self.in_channels,
            self.out_channels,
            self.input_size,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=True,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            t.weight.copy_(self.weight)
        return t


class LocallyConnectedTranspose2d(GlorotInit, _LCGeometry):
    """The transpose of an LC layer with the same geometry: maps the forward layer's output
    space (N, O, Ho, Wo) back to its input space (N, C, H, W). Its weight has the forward
    layer's weight shape and layout (it is the linear part of a target-propagation inverse g);
    its bias is untied over the input space. It is the explicit form of the paper's
    autograd-of-a-dummy-forward trick: one bmm with Wᵀ, then a fold."""

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
        self.weight = nn.Parameter(torch.empty(self.weight_shape(), device=device, dtype=dtype))
        self.bias = (
            nn.Parameter(torch.zeros(self.in_channels, *self.input_size, device=device, dtype=dtype)) if bias else None
        )
        self.reset_parameters()

    def forward(self, y: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """`add_bias=False`: the linear part alone (difference targets use it: blocks.py)."""
        self._check(y, self.out_channels, self.output_size)
        bias = self.bias if add_bias else None
        out = LCTransposeLinear.apply(to_hwcn(y), self.weight, bias, self.geometry, self.in_channels)
        return out.permute(3, 2, 0, 1)
