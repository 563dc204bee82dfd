"""A feed-forward network as a chain of blocks h_l = f_l(h_{l-1}), the last one an output block."""

from __future__ import annotations

import torch
from torch import nn

from bioscale.models.blocks import HiddenBlock, OutputBlock


class Network(nn.Module):
    def __init__(self, arch: str, input_shape: tuple[int, ...], hidden: list[HiddenBlock], output: OutputBlock):
        super().__init__()
        self.arch, self.input_shape = arch, tuple(input_shape)
        self.num_classes = output.out_shape[0]
        self.blocks = nn.ModuleList([*hidden, output])

    @property
    def depth(self) -> int:
        """L, the number of blocks (the output block included)."""
        return len(self.blocks)

    def block(self, l: int) -> HiddenBlock | OutputBlock:
        """Block l (1-based, as in the rules); typed, where nn.ModuleList yields plain Modules."""
        block = self.blocks[l - 1]
        assert isinstance(block, (HiddenBlock, OutputBlock))
        return block

    @property
    def output_block(self) -> OutputBlock:
        block = self.blocks[-1]
        assert isinstance(block, OutputBlock)
        return block

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"network {self.arch!r} expects input of shape "
                f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain forward pass to the logits (evaluation, and backprop's training pass)."""
        self.check_input(x)
        h = x
        for block in self.blocks:
            h = block(h)
        return h

    def forward_parameters(self) -> list[nn.Parameter]:
        """θ: the weights of every f_l."""
        return [p for l in range(1, self.depth + 1) for p in self.block(l).layer.parameters()]

    def inverse_parameters(self) -> list[nn.Parameter]:
        """λ: the weights of every g_l (empty when built without inverses)."""
        inverses = [self.block(l).inverse_layer for l in range(1, self.depth + 1)]
        return [p for g in inverses if g is not None for p in g.parameters()]

    def parameter_counts(self) -> dict[str, int]:
        fwd_w = sum(self.block(l).layer.get_parameter("weight").numel() for l in range(1, self.depth + 1))
        return {
            "forward_weights": fwd_w,
            "forward_params": sum(p.numel() for p in self.forward_parameters()),
            "inverse_params": sum(p.numel() for p in self.inverse_parameters()),
        }
