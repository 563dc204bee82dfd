"""The LC layer and its transpose at every ImageNet layer geometry (both papers' nets), in
float32 on a device against float64 on the CPU: output, input gradient and weight
gradient. The CUDA twin runs only where a GPU is present (`gpu` marker); the CPU run
checks the same geometries through the chunked CPU kernels."""

from __future__ import annotations

import pytest
import torch

from bioscale.models import build_network
from bioscale.models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d


def _geometries() -> list[tuple[str, int, tuple]]:
    out = []
    for arch in ("iclr_imagenet_lc", "neurips_imagenet_lc"):
        net = build_network(arch, with_inverses=False, device="meta")
        for l, block in enumerate(net.blocks, 1):
            layer = block.layer
            if isinstance(layer, LocallyConnected2d):
                geometry = (layer.in_channels, layer.out_channels, layer.input_size, layer.kernel_size)
                out.append((arch, l, (*geometry, layer.stride, layer.padding)))
    # the same geometry twice (the nets share their first layer) is tested once
    seen, unique = set(), []
    for arch, l, g in out:
        if g not in seen:
            seen.add(g)
            unique.append(pytest.param(g, id=f"{arch}-l{l}"))
    return unique


GEOMETRIES = _geometries()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double().cpu() - ref).norm() / ref.norm())


@pytest.mark.parametrize("transpose", [False, True], ids=["lc", "lc_transpose"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("device", DEVICES)
def test_lc_layers_on_device_match_cpu_float64(device, geometry, transpose):
    cls = LocallyConnectedTranspose2d if transpose else LocallyConnected2d
    torch.manual_seed(0)
    ref_layer = cls(*geometry, dtype=torch.float64)
    with torch.no_grad():  # a non-zero bias, so its gradient and its place in the output are checked
        ref_layer.bias.normal_()
    layer = cls(*geometry, device=device, dtype=torch.float32)
    layer.load_state_dict(ref_layer.state_dict())
    c, o, (h, w) = geometry[0], geometry[1], geometry[2]
    in_shape = (2, o, *ref_layer.output_size) if transpose else (2, c, h, w)
    x64 = torch.randn(in_shape, dtype=torch.float64, requires_grad=True)
    y64 = ref_layer(x64)
    dy = torch.randn_like(y64)
    y64.backward(dy)
    x = x64.detach().float().to(device).requires_grad_()
    y = layer(x)
    y.backward(dy.float().to(device))
    assert y.shape == y64.shape and y.device.type == device
    assert _rel_err(y, y64.detach()) < 1e-5
    assert _rel_err(x.grad, x64.grad) < 1e-5
    assert _rel_err(layer.weight.grad, ref_layer.weight.grad) < 1e-5
    assert _rel_err(layer.bias.grad, ref_layer.bias.grad) < 1e-5
