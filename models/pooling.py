"""Average pooling (VALID) with its exact adjoint, which the inverse g of a pooled block
uses to bring a target back to the pre-pooling map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AvgPool(nn.Module):
    def __init__(self, channels: int, input_size: tuple[int, int], kernel_size: int, stride: int):
        super().__init__()
        self.channels, self.input_size = int(channels), (int(input_size[0]), int(input_size[1]))
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.output_size = tuple((n - self.kernel_size) // self.stride + 1 for n in self.input_size)
        if min(self.output_size) < 1:
            raise ValueError(f"pool {kernel_size}/{stride} does not fit input {self.input_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """⟨pool(x), y⟩ = ⟨x, pool.adjoint(y)⟩: spread each output over its window with weight 1/k²."""
        k, s = self.kernel_size, self.stride
        kernel = torch.full((self.channels, 1, k, k), 1.0 / (k * k), dtype=y.dtype, device=y.device)
        x = F.conv_transpose2d(y, kernel, stride=s, groups=self.channels)
        # Input rows/cols beyond the last window are never read by the pool: zero.
        return F.pad(x, (0, self.input_size[1] - x.shape[-1], 0, self.input_size[0] - x.shape[-2]))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, {self.input_size} -> {self.output_size}"
