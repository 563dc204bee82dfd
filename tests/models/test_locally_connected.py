"""LocallyConnected2d and its transpose against independent oracles.

Oracles written here, not imported: a plain Python loop over output positions
(with the TensorFlow SAME rule re-derived), `F.conv2d`, and the paper's appendix
trick (the transpose as autograd of a dummy forward built on `F.unfold`)."""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bioscale.models import LocallyConnected2d
from bioscale.models.lc_functions import Fold, Unfold
from bioscale.models.lc_ops import Geometry, to_hwcn


def expected_geometry(mode, n, k, s):
    """(pad_before, pad_after, out) along one axis, straight from the TensorFlow docs."""
    if mode == "same":
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2, out
    if mode == "valid":
        return 0, 0, (n - k) // s + 1
    return mode, mode, (n + 2 * mode - k) // s + 1


def axis_padding(padding, d):
    """The padding spec along axis d: 'same' | 'valid' | int."""
    return padding if isinstance(padding, (str, int)) else padding[d]


def naive_lc(x, weight, bias, kernel, stride, padding):
    """y[n,o,i,j] = Σ W[i·Wo+j, o, (a,b,c)] · xpad[n, c, i·sh+a, j·sw+b] + bias[o,i,j], one position at a time."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    pt, pb, ho = expected_geometry(axis_padding(padding, 0), h, kh, sh)
    pl, pr, wo = expected_geometry(axis_padding(padding, 1), w, kw, sw)
    xp = F.pad(x, (pl, pr, pt, pb))
    o = weight.shape[1]
    out = x.new_empty(n, o, ho, wo)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (N, C, kh, kw)
            filt = weight[i * wo + j].reshape(o, kh, kw, c)
            out[:, :, i, j] = torch.einsum("ncab,oabc->no", patch, filt) + bias[:, i, j]
    return out


def dummy_forward_transpose(layer, y):
    """The paper's appendix: define z = A·x with A = the layer's weight, then xᵀ-map y as (∂z/∂x)ᵀ y by autograd."""
    n = y.shape[0]
    (kh, kw), c = layer.kernel_size, layer.in_channels
    x = torch.zeros(n, c, *layer.input_size, dtype=y.dtype, requires_grad=True)
    xp = F.pad(x, (*layer.pad_w, *layer.pad_h))
    cols = F.unfold(xp, layer.kernel_size, stride=layer.stride)  # (N, C·kh·kw, L), K in (C, kh, kw) order
    a = layer.weight.detach().reshape(layer.num_positions, layer.out_channels, kh, kw, c).permute(0, 1, 4, 2, 3)
    z = torch.einsum("nkl,lok->nol", cols, a.reshape(layer.num_positions, layer.out_channels, -1))
    (xt,) = torch.autograd.grad(z, x, y.reshape(n, layer.out_channels, -1))
    return xt


def random_layer(c, o, size, kernel, stride, padding, dtype=torch.float64, seed=0, recompute=False):
    torch.manual_seed(seed)
    layer = LocallyConnected2d(c, o, size, kernel, stride, padding, dtype=dtype, recompute_unfold=recompute)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


def random_cases():
    rng = random.Random(0)
    for stride, k, padding in itertools.product((1, 2, 4), (1, 3, 5, 9), ("same", "valid", 2)):
        h, w = rng.randint(k, k + 6), rng.randint(k + 1, k + 8)  # non-square, always fits VALID
        yield (rng.randint(1, 3), rng.randint(1, 4), (h, w), k, stride, padding)
    # rectangular kernels and strides
    yield (2, 3, (7, 10), (3, 5), (2, 1), "same")
    yield (3, 2, (9, 6), (5, 2), (1, 3), "valid")
    yield (2, 2, (8, 5), (2, 3), (3, 2), (1, 2))


CASES = list(random_cases())


@pytest.mark.parametrize("c,o,size,kernel,stride,padding", CASES)
def test_equals_naive_loop(c, o, size, kernel, stride, padding):
    layer = random_layer(c, o, size, kernel, stride, padding)
    x = torch.randn(3, c, *size, dtype=torch.float64)
    ref = naive_lc(x, layer.weight.detach(), layer.bias.detach(), layer.kernel_size, layer.stride, padding)
    out = layer(x)
    assert out.shape == ref.shape and layer.output_size == ref.shape[2:]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out32 = copy.deepcopy(layer).float()(x.float())
    torch.testing.assert_close(out32, ref.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernel,stride,padding,size",
    [
        (3, 1, 1, (9, 7)),
        (3, 2, 1, (9, 8)),
        (5, 2, 2, (12, 9)),
        (9, 4, 3, (23, 17)),
        (1, 1, 0, (4, 6)),
        ((3, 5), (2, 1), (1, 2), (8, 11)),
        (3, 1, "same", (6, 9)),
        (5, 1, "same", (7, 6)),
        (3, 2, "valid", (9, 10)),
    ],
)
def test_from_conv2d_equals_conv2d(kernel, stride, padding, size):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, kernel, stride, padding)
    layer = LocallyConnected2d.from_conv2d(conv, size)
    x = torch.randn(4, 3, *size)
    expected = F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_from_conv2d_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match="groups"):
        LocallyConnected2d.from_conv2d(torch.nn.Conv2d(4, 4, 3, groups=2), (8, 8))
    with pytest.raises(ValueError, match="dilation"):
        LocallyConnected2d.from_conv2d(torch.nn.Conv2d(4, 4, 3, dilation=2), (8, 8))
    with pytest.raises(ValueError, match="zero padding"):
        LocallyConnected2d.from_conv2d(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (8, 8))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("c,o,size,kernel,stride,padding", CASES[::3])
def test_transpose_is_adjoint(dtype, tol, c, o, size, kernel, stride, padding):
    layer = random_layer(c, o, size, kernel, stride, padding, dtype=dtype)
    t = layer.transpose()
    with torch.no_grad():
        t.bias.normal_()
    x = torch.randn(2, c, *size, dtype=dtype)
    y = torch.randn(2, o, *layer.output_size, dtype=dtype)
    ax, aty = layer(x) - layer.bias, t(y) - t.bias
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    scale = ax.norm() * y.norm()
    assert abs(lhs - rhs) <= tol * scale
    assert t(y).shape == x.shape


@pytest.mark.parametrize("c,o,size,kernel,stride,padding", CASES[1::4])
def test_transpose_equals_dummy_forward_trick(c, o, size, kernel, stride, padding):
    layer = random_layer(c, o, size, kernel, stride, padding)
    t = layer.transpose()
    y = torch.randn(3, o, *layer.output_size, dtype=torch.float64)
    torch.testing.assert_close(t(y) - t.bias, dummy_forward_transpose(layer, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, "same"), (3, 2, "same"), (5, 2, "valid"), (4, 3, 1)])
def test_locality(kernel, stride, padding):
    layer = random_layer(2, 3, (11, 9), kernel, stride, padding)
    x = torch.randn(2, 2, 11, 9, dtype=torch.float64)
    base = layer(x)
    pt, pl = layer.pad_h[0], layer.pad_w[0]
    for r, s in [(0, 0), (5, 4), (10, 8), (3, 7)]:
        x2 = x.clone()
        x2[1, 1, r, s] += 1.0
        changed = (layer(x2) - base).abs() > 0
        assert not changed[0].any()  # other samples untouched
        for i, j in itertools.product(range(layer.output_size[0]), range(layer.output_size[1])):
            inside = (
                0 <= r - (i * layer.stride[0] - pt) < layer.kernel_size[0]
                and 0 <= s - (j * layer.stride[1] - pl) < layer.kernel_size[1]
            )
            assert bool(changed[1, :, i, j].all()) == inside and bool(changed[1, :, i, j].any()) == inside


GRADCHECK_CASES = [(2, 3, (5, 6), 3, 2, "same"), (3, 2, (6, 5), (3, 2), (1, 2), 1), (2, 2, (7, 7), 5, 1, "valid")]


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("c,o,size,kernel,stride,padding", GRADCHECK_CASES)
def test_gradcheck_forward_and_feedback_path(recompute, c, o, size, kernel, stride, padding):
    layer = random_layer(c, o, size, kernel, stride, padding, recompute=recompute)
    x = torch.randn(2, c, *size, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def run(x, w, b, feedback=None):
        return functional_call(layer, {"weight": w, "bias": b}, (x, feedback))

    assert torch.autograd.gradcheck(run, (x, w, b))
    # With the feedback weight equal to the weight, the FA path is the true gradient.
    assert torch.autograd.gradcheck(lambda x, w, b: run(x, w, b, w.detach().clone()), (x, w, b))


@pytest.mark.parametrize("c,o,size,kernel,stride,padding", GRADCHECK_CASES)
def test_gradcheck_transpose(c, o, size, kernel, stride, padding):
    t = random_layer(c, o, size, kernel, stride, padding).transpose()
    y = torch.randn(2, o, *t.output_size, dtype=torch.float64, requires_grad=True)
    w = t.weight.detach().clone().requires_grad_()
    b = torch.randn_like(t.bias).requires_grad_()
    assert torch.autograd.gradcheck(lambda y, w, b: functional_call(t, {"weight": w, "bias": b}, (y,)), (y, w, b))


def test_gradcheck_unfold_fold_pair():
    g = Geometry((5, 6), (3, 2), (2, 1), (1, 1), (0, 0), (3, 5))
    x = torch.randn(5, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    cols = torch.randn(15, 12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: Unfold.apply(x, g), (x,))
    assert torch.autograd.gradcheck(lambda c: Fold.apply(c, g, 2), (cols,))
    # each is the other's adjoint
    assert torch.allclose((Unfold.apply(x, g) * cols).sum(), (x * Fold.apply(cols, g, 2)).sum())


@pytest.mark.parametrize("recompute", [True, False])
def test_feedback_alignment_input_gradient(recompute):
    layer = random_layer(3, 4, (9, 8), 3, 2, "same", recompute=recompute)
    feedback = torch.randn_like(layer.weight)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, *layer.output_size, dtype=torch.float64)

    out = layer(x, feedback)
    torch.testing.assert_close(out, layer(x))  # forward uses the weight
    with torch.no_grad():  # overwrite the forward weight after the forward: must not reach the backward
        layer.weight.copy_(torch.randn_like(layer.weight))
    out.backward(grad)

    t = layer.transpose()
    with torch.no_grad():
        t.weight.copy_(feedback)
        t.bias.zero_()
    torch.testing.assert_close(x.grad, t(grad), rtol=1e-12, atol=1e-12)
    # weight and bias gradients are the true ones
    ref = random_layer(3, 4, (9, 8), 3, 2, "same")
    x2 = x.detach().clone().requires_grad_()
    ref(x2).backward(grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_backprop_sees_in_place_weight_change():
    layer = random_layer(2, 2, (5, 5), 3, 1, "same")
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_double_backward_is_refused_not_wrong():
    layer = random_layer(2, 2, (5, 5), 3, 1, "same")
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


def test_recompute_does_not_change_gradients():
    grads = []
    for recompute in (True, False):
        layer = random_layer(3, 4, (10, 7), 5, 2, "same", recompute=recompute)
        x = torch.randn(
            3, 3, 10, 7, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(3)
        )
        torch.tanh(layer(x)).square().sum().backward()
        grads.append((x.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_layout_chain_needs_no_permute_copy():
    """Outputs are NCHW-shaped with batch-innermost memory; tanh keeps it; the next layer reads it in place."""
    a = LocallyConnected2d(3, 4, (8, 8), 3, 2, "same")
    b = LocallyConnected2d(4, 2, (4, 4), 3, 1, "same")
    x = torch.randn(5, 3, 8, 8)
    h = torch.tanh(a(x))
    assert h.shape == (5, 4, 4, 4)
    assert to_hwcn(h).data_ptr() == h.data_ptr()
    y = b(h)
    torch.testing.assert_close(y, b(h.contiguous()))
    torch.testing.assert_close(a(x), a(x.contiguous(memory_format=torch.channels_last)))
    assert h.flatten(1).shape == (5, 64)


def test_reset_parameters_is_glorot_and_reproducible():
    layer = LocallyConnected2d(3, 8, (6, 6), 3, 1, "same")
    bound = math.sqrt(6 / (layer.fan_in + layer.fan_out))
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    w = []
    for _ in range(2):
        layer.reset_parameters(torch.Generator().manual_seed(7))
        w.append(layer.weight.detach().clone())
    assert torch.equal(*w)
    fb = torch.empty_like(layer.weight)
    assert fb.shape == layer.weight.shape == (36, 8, 27)


def test_bad_input_errors():
    layer = LocallyConnected2d(3, 4, (8, 6), 3, 1, "same")
    with pytest.raises(ValueError, match=r"expects input \(N, 3, 8, 6\), got \(2, 3, 6, 8\)"):
        layer(torch.randn(2, 3, 6, 8))
    with pytest.raises(ValueError, match=r"got \(3, 8, 6\)"):
        layer(torch.randn(3, 8, 6))
    with pytest.raises(ValueError, match="feedback_weight"):
        layer(torch.randn(2, 3, 8, 6), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"expects input \(N, 4, 8, 6\), got \(2, 3, 8, 6\)"):
        layer.transpose()(torch.randn(2, 3, 8, 6))
    with pytest.raises(ValueError, match="padding must be"):
        LocallyConnected2d(3, 4, (8, 6), 3, 1, "full")
    with pytest.raises(ValueError, match="does not fit"):
        LocallyConnected2d(3, 4, (4, 4), 5, 1, "valid")
