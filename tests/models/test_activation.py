"""`models/activation.py`: the CPU tanh through numpy is tanh (values, layout, gradients)."""

from __future__ import annotations

import pytest
import torch

from bioscale.models.activation import tanh, tanh_


def _ulps(y: torch.Tensor, ref64: torch.Tensor) -> float:
    r = ref64.float().abs()
    ulp = (torch.nextafter(r, torch.tensor(float("inf"))) - r).double()
    return ((y.double() - ref64).abs() / ulp).max().item()


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 0.3, 1.5, 10.0])
def test_float32_within_two_ulps(scale):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * scale
    assert _ulps(tanh(x), torch.tanh(x.double())) <= 2.0


def test_float64_matches_torch():
    x = torch.randn(50_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(tanh(x), torch.tanh(x), rtol=1e-15, atol=0)


def test_keeps_the_batch_innermost_layout():
    # LC activations are NCHW views of (H, W, C, N) memory; the result must be too
    x = torch.randn(7, 5, 3, 4).permute(3, 2, 0, 1)
    y = tanh(x)
    assert y.shape == x.shape and y.stride() == x.stride()
    torch.testing.assert_close(y, torch.tanh(x), rtol=3e-7, atol=0)


def test_gradients_and_double_backward_are_tanhs():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    x.requires_grad_()
    torch.autograd.gradcheck(tanh, (x,))
    torch.autograd.gradgradcheck(tanh, (x,))
    (g,) = torch.autograd.grad(tanh(x).sum(), x)
    (ref,) = torch.autograd.grad(torch.tanh(x).sum(), x)
    # 1 − t² multiplies t's relative error by up to 2t²/(1 − t²): a few ulps, not 1e-15
    torch.testing.assert_close(g, ref, rtol=1e-14, atol=0)


def test_in_place_and_other_dtypes():
    x = torch.randn(64, generator=torch.Generator().manual_seed(2))
    ref = torch.tanh(x)
    y = x.clone()
    assert tanh_(y) is y
    torch.testing.assert_close(y, ref, rtol=3e-7, atol=0)
    b = x.bfloat16()
    assert torch.equal(tanh(b), torch.tanh(b))  # not numpy's: bf16 goes to torch.tanh
    leaf = x.clone().requires_grad_()
    with pytest.raises(RuntimeError):  # in place on a leaf that requires grad: torch's own refusal
        tanh_(leaf)
