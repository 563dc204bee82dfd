"""DFA's signal B·e is built in the memory layout of the activation it lands on: for LC
activations (NCHW views of (H, W, C, N) memory) in that layout, with the same values as
for a contiguous NCHW activation (the FC oracle in test_oracle.py covers the latter)."""

from __future__ import annotations

import torch

from bioscale.algorithms.feedback import DirectFeedback, FeedbackTrace


def _signal(h_prev: torch.Tensor, feedback: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The gradient as DirectFeedback hands it on (a hook on a non-leaf: a leaf's .grad would
    be re-strided to the leaf's layout by autograd and hide the layout produced)."""
    trace = FeedbackTrace()
    trace.output_error = e
    h_prev = h_prev.detach().requires_grad_().clone()  # clone keeps the strides
    seen = []
    h_prev.register_hook(seen.append)
    a = torch.zeros(e.shape, dtype=e.dtype, requires_grad=True)
    DirectFeedback.apply(a, h_prev, feedback, trace, False).sum().backward()
    return seen[0]


def test_the_signal_keeps_the_batch_innermost_layout_and_its_values():
    torch.manual_seed(0)
    n, c, h, w, k = 7, 3, 5, 4, 10
    feedback = torch.randn(k, c * h * w, dtype=torch.float64)
    e = torch.randn(n, k, dtype=torch.float64)
    nchw = torch.randn(n, c, h, w, dtype=torch.float64)
    hwcn = nchw.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)  # same values, LC memory layout
    expected = (e @ feedback).reshape(n, c, h, w)
    got_nchw, got_hwcn = _signal(nchw, feedback, e), _signal(hwcn, feedback, e)
    torch.testing.assert_close(got_nchw, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_hwcn, expected, rtol=0, atol=1e-12)
    assert got_hwcn.permute(2, 3, 1, 0).is_contiguous()  # no transposing walk for the layers below
