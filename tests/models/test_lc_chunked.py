"""The large-layer LC kernels give the one-shot kernels' results: forced here on small
layers by shrinking `lc_ops.CHUNK_BYTES`, float64, every gradient of the layer and of its
transpose. Both large-layer forms: row strips read in place (float32/64 on CPU) and
columns built a few rows at a time (bf16, GPUs), the adjoint tap by tap in both; and
the native kernels (`lc_native`, CPU float32/64 at any size) against the same reference."""

from __future__ import annotations

import pytest
import torch

from bioscale.models import LocallyConnected2d, lc_native, lc_ops

CASES = [
    # c, o, size, kernel, stride, padding
    (3, 4, (9, 8), 3, 1, "same"),
    (3, 4, (10, 7), 5, 2, "same"),
    (2, 3, (9, 9), 3, 2, "valid"),
    (4, 2, (7, 11), (3, 2), (1, 2), 1),
    # stride 1 with an odd pad, VALID with a wide kernel, and a pad wider than the kernel
    # (windows wholly in the padding)
    (2, 3, (6, 7), (3, 5), 1, "valid"),
    (3, 2, (5, 6), (2, 3), 1, "same"),
    (2, 2, (4, 5), 3, 1, 3),
]


def _grads(layer, x, y, feedback=None):
    """Output and every gradient of the layer and of its transpose (input grads too)."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    t = layer.transpose()
    out = layer(x, feedback)
    back = t(y)
    (out * torch.cos(out)).sum().backward()
    (back * torch.sin(back)).sum().backward()
    tensors = [out, back, x.grad, y.grad, layer.weight.grad, layer.bias.grad, t.weight.grad, t.bias.grad]
    return [v.detach().clone() for v in tensors]


@pytest.mark.parametrize("c, o, size, kernel, stride, padding", CASES)
@pytest.mark.parametrize("with_feedback", [False, True])
@pytest.mark.parametrize("path", ["strips", "columns", "native"])
def test_chunked_kernels_match_one_shot(monkeypatch, c, o, size, kernel, stride, padding, with_feedback, path):
    torch.manual_seed(0)
    layer = LocallyConnected2d(c, o, size, kernel, stride, padding, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, c, *size, dtype=torch.float64)
    y = torch.randn(5, o, *layer.output_size, dtype=torch.float64)
    feedback = torch.randn_like(layer.weight) if with_feedback else None
    g = layer.geometry
    k = layer.weight.shape[2]
    assert lc_ops.chunk_rows(g, k, 5, 8) == 0  # small: one-shot kernels by default
    with lc_native.disabled():
        reference = _grads(layer, x, y, feedback)
    layer.zero_grad()
    if path == "native":
        assert lc_native.usable(x), "the native LC kernels did not build here"
        chunked = _grads(layer, x, y, feedback)
    else:
        # one row per chunk; the transpose layer's geometry is the same object's twin
        monkeypatch.setattr(lc_ops, "CHUNK_BYTES", 1)
        monkeypatch.setattr(lc_ops, "_strip_path", lambda x: path == "strips")
        assert lc_ops.chunk_rows(g, k, 5, 8) == 1
        with lc_native.disabled():
            chunked = _grads(layer, x, y, feedback)
    for ref, got in zip(reference, chunked, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)  # strips: kh partial sums, rounding alone
