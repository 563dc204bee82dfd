"""Average pooling (VALID) with its exact adjoint, which the inverse g of a pooled block
uses to bring a target back to the pre-pooling map.

LC layers hand out NCHW-shaped tensors stored batch-innermost, (H, W, C, N) in memory
(see models/locally_connected.py). Pooled directly, such a tensor makes the pooling
kernels copy at ~2 ns/element; viewed as one channels_last image with C·N channels
it pools ~30× faster (measured: 23.4 → 0.8 ms for 32×48×56²) and the result is again
(H', W', C, N) in memory. Any other layout is pooled as it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _hwcn_image(x: torch.Tensor) -> torch.Tensor | None:
    """(N, C, H, W) stored as (H, W, C, N) → the same memory as a (1, C·N, H, W) channels_last image."""
    n, c, h, w = x.shape
    hwcn = x.permute(2, 3, 1, 0)
    if not hwcn.is_contiguous():
        return None
    return hwcn.reshape(1, h, w, c * n).permute(0, 3, 1, 2)


def _from_hwcn_image(img: torch.Tensor, n: int, c: int) -> torch.Tensor:
    _, _, h, w = img.shape
    return img.permute(0, 2, 3, 1).reshape(h, w, c, n).permute(3, 2, 0, 1)


class AvgPool(nn.Module):
    def __init__(self, channels: int, input_size: tuple[int, int], kernel_size: int, stride: int):
        super().__init__()
        self.channels, self.input_size = int(channels), (int(input_size[0]), int(input_size[1]))
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.output_size = tuple((n - self.kernel_size) // self.stride + 1 for n in self.input_size)
        if min(self.output_size) < 1:
            raise ValueError(f"pool {kernel_size}/{stride} does not fit input {self.input_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = _hwcn_image(x)
        if img is None:
            return F.avg_pool2d(x, self.kernel_size, self.stride)
        return _from_hwcn_image(F.avg_pool2d(img, self.kernel_size, self.stride), x.shape[0], x.shape[1])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """⟨pool(x), y⟩ = ⟨x, pool.adjoint(y)⟩: spread each output over its window with weight 1/k²."""
        img = _hwcn_image(y)
        x = self._adjoint_image(y if img is None else img)
        return x if img is None else _from_hwcn_image(x, y.shape[0], y.shape[1])

    def _adjoint_image(self, y: torch.Tensor) -> torch.Tensor:
        k, s, groups = self.kernel_size, self.stride, y.shape[1]
        kernel = torch.full((groups, 1, k, k), 1.0 / (k * k), dtype=y.dtype, device=y.device)
        x = F.conv_transpose2d(y, kernel, stride=s, groups=groups)
        # Input rows/cols beyond the last window are never read by the pool: zero.
        return F.pad(x, (0, self.input_size[1] - x.shape[-1], 0, self.input_size[0] - x.shape[-2]))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, {self.input_size} -> {self.output_size}"
