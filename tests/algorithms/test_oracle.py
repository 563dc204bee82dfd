"""One step of every rule × schedule × inverse loss × noise setting matches the plain
loop-by-loop oracle (tests/algorithms/oracle.py) on every parameter, in float64 with SGD."""

from __future__ import annotations

import itertools

import pytest
import torch

from bioscale.algorithms import RuleConfig, build_learner
from tests.algorithms.oracle import oracle_step

ARCH, IN, CLASSES, N, LR = "neurips_mnist_fc", (16,), 5, 6, 0.05
TP = ("dtp", "sdtp", "aosdtp")
CASES = [(r, "parallel", None, 0.0) for r in ("bp", "fa", "dfa")] + [
    (r, s, il, sigma)
    for r, s, il, sigma in itertools.product(
        TP, ("parallel", "alternating"), ("denoising", "noise_preserving"), (0.0, 0.2)
    )
]


def make(rule, schedule, inverse_loss, sigma, aux_dim=7):
    tp = rule in TP
    cfg = RuleConfig(
        rule=rule,
        schedule=schedule if tp else None,
        inverse_loss=inverse_loss,
        sigma=sigma if tp else None,
        alpha=0.3 if rule == "dtp" else None,
        aux_dim=aux_dim if rule == "aosdtp" else None,
    )
    learner = build_learner(ARCH, cfg, seed=3, dtype=torch.float64, input_shape=IN, num_classes=CLASSES)
    return learner, cfg


def snapshot(learner):
    net = learner.net
    params = {"W": {}, "b": {}, "V": {}, "c": {}}
    for l, block in enumerate(net.blocks, 1):
        params["W"][l] = block.layer.weight.detach().clone()
        params["b"][l] = block.layer.bias.detach().clone()
        if block.inverse_layer is not None:
            params["V"][l] = block.inverse_layer.weight.detach().clone()
            params["c"][l] = block.inverse_layer.bias.detach().clone()
    return params


def oracle_extras(learner):
    net = learner.net
    extras = {}
    if learner.rule.name == "fa":
        extras["feedback"] = {l: learner.feedback[f"feedback_{l}"] for l in range(2, net.depth + 1)}
    if learner.rule.name == "dfa":
        extras["feedback"] = {l: learner.feedback[f"feedback_{l}"] for l in range(1, net.depth)}
    if learner.rule.name == "aosdtp":
        extras["aux_projection"] = net.output_block.aux_projection
    return extras


def project_step(learner, x, y, phase, noise, c=1.0, lr=LR):
    params = learner.forward_parameters() + learner.inverse_parameters()
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad()
    out = learner(x, y, phase=phase, grad_scale=c, noise=noise)
    for h in out.hidden:
        if h.requires_grad:  # phase 'inverse' runs the forward without a graph
            h.retain_grad()
    (c * out.loss).backward()
    grads_at_h = [h.grad.clone() if h.grad is not None else None for h in out.hidden]
    opt.step()
    return out, grads_at_h


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, *IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return x, y


def noise_for(learner, x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hs = [x]
        for block in learner.net.blocks[:-1]:
            hs.append(block(hs[-1]))
    return {
        l: sigma * torch.randn(hs[l - 1].shape, generator=g, dtype=torch.float64)
        for l in range(2, learner.net.depth + 1)
    }


def assert_params_match(learner, expected, tol=1e-10):
    got = snapshot(learner)
    for kind in expected:
        for l, want in expected[kind].items():
            diff = (got[kind][l] - want).abs().max().item()
            assert diff < tol, f"{kind}[{l}] differs from the oracle by {diff:.3g}"


@pytest.mark.parametrize("rule,schedule,inverse_loss,sigma", CASES)
def test_one_step_matches_oracle(rule, schedule, inverse_loss, sigma):
    learner, cfg = make(rule, schedule, inverse_loss, sigma)
    x, y = data()
    noise = noise_for(learner, x, sigma)
    il = learner.rule.inverse_loss if rule in TP else "denoising"
    phases = ["both"] if schedule == "parallel" else ["inverse", "forward"]  # alternating: one of each
    for phase in phases:
        before = snapshot(learner)
        expected, info = oracle_step(
            before, x, y, rule, LR, phase=phase, alpha=0.3, inverse_loss=il, noise=noise, **oracle_extras(learner)
        )
        out, grads_at_h = project_step(learner, x, y, phase, noise)
        assert_params_match(learner, expected)
        if phase != "inverse":
            # the gradient arriving at each h_l is exactly the oracle's h_l − ĥ_l
            for l, g in enumerate(grads_at_h, 1):
                assert (g - info["delta"][l]).abs().max() < 1e-10, f"gap at h_{l}"
        for l, v in info["inverse_loss"].items():
            assert abs(out.inverse_losses[l] - v) < 1e-9


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "dtp", "sdtp", "aosdtp"])
def test_grad_scale_scales_every_gradient_exactly(rule):
    """(c·loss).backward() with grad_scale=c gives exactly c × the c=1 gradients (gradient
    accumulation, loss scaling); without telling the rule c, TP updates would be wrong."""
    grads = {}
    for c in (1.0, 0.25):
        learner, _ = make(rule, "parallel", None, 0.2)
        x, y = data()
        noise = noise_for(learner, x, 0.2) if rule in TP else None
        out = learner(x, y, grad_scale=c, noise=noise)
        (c * out.loss).backward()
        grads[c] = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    for g1, gc in zip(grads[1.0], grads[0.25]):
        assert torch.allclose(gc, 0.25 * g1, rtol=1e-12, atol=1e-15)


def test_bp_equals_plain_autograd():
    learner, _ = make("bp", "parallel", None, 0.0)
    x, y = data()
    learner(x, y).loss.backward()
    ours = [p.grad.clone() for p in learner.net.parameters()]
    learner.zero_grad()
    torch.nn.functional.cross_entropy(learner.net(x), y, reduction="sum").backward()
    for a, b in zip(ours, (p.grad for p in learner.net.parameters())):
        assert torch.equal(a, b)
