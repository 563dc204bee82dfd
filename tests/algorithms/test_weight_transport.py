"""SDTP, AO-SDTP, FA, DFA, sign-symmetry, KP, LDRL and DRL (and DTP below its penultimate
layer) use no forward weight of a higher layer in a lower layer's update. After the forward
pass, W_{l+1} is overwritten in place (`no_grad().copy_`): BP's backward then raises
(autograd's version check — it needed W_{l+1}), while the other rules' updates of every
layer ≤ l are bit-for-bit unchanged. (Replacing the Parameter object would prove nothing:
the graph keeps the old tensor; `.data.copy_` would change BP silently.)"""

from __future__ import annotations

import pytest
import torch

from bioscale.algorithms import RuleConfig, build_learner

# signsym reads sign(W_l) in the forward only (it builds B_l = s·sign(W_l) there; that it
# reads the signs alone is tests/algorithms/test_later_rules.py); kp's signal and B's update
# read B and the layer's activity, never W. ldrl and drl send their top target through the
# trained g_L (not W_L), so they cover the output layer too.
RULES_WITHOUT_TRANSPORT = ("fa", "dfa", "dtp", "sdtp", "aosdtp", "signsym", "kp", "ldrl", "drl")


def lower_grads(arch, rule, replace_layer, shape):
    cfg = RuleConfig(rule=rule, aux_dim=16 if rule == "aosdtp" else None)
    learner = build_learner(arch, cfg, seed=0, dtype=torch.float64, input_shape=shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=g)
    out = learner(x, y, phase="forward" if learner.rule.target_propagation else "both")
    if replace_layer is not None:
        w = learner.net.blocks[replace_layer - 1].layer.weight
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype))
    out.loss.backward()
    below = [p for b in learner.net.blocks[: (replace_layer or learner.net.depth) - 1] for p in b.layer.parameters()]
    return [p.grad.clone() for p in below]


@pytest.mark.parametrize("arch,shape", [("neurips_mnist_fc", (12,)), ("iclr_mnist_lc", (1, 12, 12))])
@pytest.mark.parametrize("rule", RULES_WITHOUT_TRANSPORT)
def test_lower_updates_ignore_higher_forward_weights(arch, shape, rule):
    depth = 6 if arch == "neurips_mnist_fc" else 5
    # every higher layer, the output layer included — except for DTP, whose penultimate
    # target is by design a gradient step through the output layer.
    last = depth - 1 if rule == "dtp" else depth
    for replace in range(2, last + 1):
        reference = lower_grads(arch, rule, None, shape)[: sum(2 for _ in range(replace - 1))]
        changed = lower_grads(arch, rule, replace, shape)
        for a, b in zip(reference, changed):
            assert torch.equal(a, b), f"{rule}: layer < {replace} update depends on W_{replace}"


@pytest.mark.parametrize("arch,shape", [("neurips_mnist_fc", (12,)), ("iclr_mnist_lc", (1, 12, 12))])
def test_bp_needs_the_higher_weights(arch, shape):
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lower_grads(arch, "bp", 3, shape)
