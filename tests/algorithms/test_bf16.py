"""bf16 autocast (CPU autocast here; the same code paths run under CUDA autocast).

- every rule on FC, LC and conv nets takes a step with backward inside autocast (the
  trainer's pattern) and outside it (the standard AMP pattern), with float32 gradients;
- target propagation's signals survive bf16: per-layer cosine with the float64 signal of
  the same weights and batch (the old g(h) − g(h − δ) in bf16 measured 0.004-0.11 for
  DTP at α = 1.273e-3);
- `tanh_difference` forms the difference in float32 from bf16 inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bioscale.algorithms import angles_to_bp, build_learner
from bioscale.algorithms.config import RULES, RuleConfig
from bioscale.models.blocks import tanh_difference

ARCHS = ("iclr_mnist_fc", "iclr_mnist_lc", "iclr_mnist_conv")
# every test runs on CPU (CPU autocast); its twin on CUDA where a GPU is present
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _autocast(device: str, enabled: bool = True):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=enabled)


def _learner(arch: str, rule: str, dtype=torch.float32, device="cpu", **extra):
    return build_learner(
        arch,
        RuleConfig(rule=rule, **extra),
        seed=1,
        dtype=dtype,
        device=device,
        input_shape=(1, 28, 28),
        num_classes=10,
    )


def _batch(n: int = 32, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("backward_inside", [True, False], ids=["backward-in-autocast", "backward-outside"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("device", DEVICES)
def test_every_rule_steps_under_bf16_autocast(device, rule, arch, backward_inside):
    learner = _learner(arch, rule, device=device)
    x, y = _batch(device=device)
    with _autocast(device):
        out = learner(x, y)
        if backward_inside:
            out.loss.backward()
    if not backward_inside:
        out.loss.backward()
    assert out.logits.dtype == torch.bfloat16  # autocast really ran the layers in bf16
    for name, p in learner.named_parameters():
        if p.grad is None:
            continue
        assert p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    assert all(p.grad is not None for p in learner.forward_parameters())


def _signals(learner, x, y, autocast: bool) -> list[torch.Tensor]:
    """c·δ_l at every hidden layer (forward phase: the task loss's signals only)."""
    with _autocast(x.device.type, enabled=autocast):
        out = learner(x, y, phase="forward")
        for h in out.hidden:
            h.retain_grad()
    out.loss.backward()
    return [h.grad.double().flatten() for h in out.hidden]


@pytest.mark.parametrize("arch", ["iclr_mnist_fc", "iclr_mnist_lc"])
@pytest.mark.parametrize(("rule", "extra"), [("dtp", {"alpha": 1.273e-3}), ("sdtp", {}), ("aosdtp", {})])
@pytest.mark.parametrize("device", DEVICES)
def test_target_propagation_signals_survive_bf16(device, rule, extra, arch):
    ref_learner = _learner(arch, rule, torch.float64, **extra)  # float64 reference on the CPU
    learner = copy.deepcopy(ref_learner).float().to(device)
    x, y = _batch(64, torch.float64)
    ref = _signals(ref_learner, x, y, autocast=False)
    got = _signals(learner, x.float().to(device), y.to(device), autocast=True)
    for l, (a, b) in enumerate(zip(got, ref), 1):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        assert cos > 0.999, f"layer {l}: cosine {cos:.5f} between the bf16 and float64 signals"


def test_tanh_difference_equals_the_difference_of_tanh():
    g = torch.Generator().manual_seed(0)
    a = 3 * torch.randn(1000, generator=g, dtype=torch.float64)
    b = 1e-2 * torch.randn(1000, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tanh_difference(a, b), torch.tanh(a) - torch.tanh(a - b), rtol=1e-12, atol=1e-15)
    # bf16 inputs: the difference is formed in float32 (error ~1e-7), not between two bf16
    # values of tanh (error ~4e-3 of tanh, about the size of the difference itself here)
    a16, b16 = a.bfloat16(), b.bfloat16()
    exact = torch.tanh(a16.double()) - torch.tanh(a16.double() - b16.double())
    got = tanh_difference(a16, b16)
    assert got.dtype == torch.float32
    assert (got.double() - exact).abs().max() < 1e-6
    in_bf16 = (torch.tanh(a16) - torch.tanh(a16 - b16)).double()
    assert (in_bf16 - exact).abs().max() > 1e-3


@pytest.mark.parametrize("rule", ["bp", "fa", "sdtp"])
@pytest.mark.parametrize("device", DEVICES)
def test_angles_to_bp_under_bf16_autocast(device, rule):
    """The diagnostic under autocast (where the trainer runs it): BP's update is BP's, and
    every rule's output layer is trained by BP (a bf16 dot product read 2.4° there)."""
    learner = _learner("iclr_mnist_lc", rule, device=device)
    x, y = _batch(device=device)
    with _autocast(device):
        angles = angles_to_bp(learner, x, y)
    assert angles[learner.net.depth] < 0.5, angles
    if rule == "bp":
        assert max(angles.values()) < 0.5, angles
