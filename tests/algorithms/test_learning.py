"""Every rule learns on a small real dataset (sklearn's 8×8 digits), on an FC and an LC net:
the training error ends far below chance AND below training the readout alone (so the
hidden layers learned), and the hidden layers' updates have aligned with backprop's."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from bioscale.algorithms import RULES, AdamConfig, OptimConfig, RuleConfig, Updater, angles_to_bp, build_learner

TP = ("dtp", "sdtp", "aosdtp")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0 - 0.3) / 0.4
    return x, torch.tensor(d.target)


def train(arch, rule, x, y, readout_only=False, epochs=4):
    tp = rule in TP
    cfg = RuleConfig(rule=rule, sigma=0.1 if tp else None, aux_dim=64 if rule == "aosdtp" else None)
    learner = build_learner(arch, cfg, seed=0, input_shape=(1, 8, 8))
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-3), inverse=AdamConfig(lr=1e-3)))
    if readout_only:
        updater.forward = torch.optim.Adam(learner.net.output_block.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 31, 32):
            idx = perm[i : i + 32]
            updater.step(x[idx], y[idx])
    with torch.no_grad():
        err = (learner.net(x).argmax(1) != y).float().mean().item()
    return learner, err


# the LC net (the product's) in the default suite; every rule's FC step is checked against
# the oracles (tests/algorithms/test_oracle.py, test_later_rules.py, test_drl_rules.py)
@pytest.mark.parametrize("arch", [pytest.param("neurips_mnist_fc", marks=pytest.mark.slow), "iclr_mnist_lc"])
def test_every_rule_learns(arch, digits):
    x, y = digits
    _, readout_err = train(arch, "bp", x, y, readout_only=True)
    for rule in RULES:
        learner, err = train(arch, rule, x, y)
        assert err < 0.15, f"{rule} on {arch}: training error {err:.3f} (chance 0.9)"
        assert err < readout_err, f"{rule} on {arch}: {err:.3f} not better than readout-only {readout_err:.3f}"
        angles = angles_to_bp(learner, x[:256], y[:256])
        hidden = [a for l, a in angles.items() if l < learner.net.depth]
        assert max(hidden) < 85.0, f"{rule} on {arch}: hidden updates not aligned with BP: {angles}"
