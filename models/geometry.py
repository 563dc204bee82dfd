"""Sliding-window geometry shared by the LC layers and their weight-shared conv twins:
the paper's padding rules and the shape bookkeeping every such layer needs."""

from __future__ import annotations

import math

from torch import nn


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resolve_padding(
    padding, input_size, kernel_size, stride
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
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
            p = pair(padding)[i]
            if p < 0:
                raise ValueError(f"padding must be non-negative, got {padding!r}")
            out = (n + 2 * p - k) // s + 1
            pads.append((p, p))
        if out < 1:
            raise ValueError(
                f"kernel {kernel_size} with stride {stride} and padding {padding!r} "
                f"does not fit input {tuple(input_size)}"
            )
        outs.append(out)
    return pads[0], pads[1], (outs[0], outs[1])


class SlidingWindow(nn.Module):
    """Sets in_channels, out_channels, input_size, kernel_size, stride, padding, pad_h, pad_w,
    output_size, fan_in (C·kh·kw) and fan_out (O·kh·kw)."""

    def _setup(self, in_channels, out_channels, input_size, kernel_size, stride, padding):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size, self.kernel_size, self.stride = pair(input_size), pair(kernel_size), pair(stride)
        self.padding = padding
        self.pad_h, self.pad_w, self.output_size = resolve_padding(
            padding, self.input_size, self.kernel_size, self.stride
        )
        kh, kw = self.kernel_size
        self.fan_in, self.fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"output_size={self.output_size}"
        )
