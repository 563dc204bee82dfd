"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch

from bioscale.algorithms import RuleConfig, build_learner, build_rule
from bioscale.models import build_network


def test_wrong_input_shape_names_expected_and_got():
    learner = build_learner("iclr_mnist_lc", RuleConfig(rule="sdtp"))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        learner(torch.randn(2, 3, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expects input of shape"):
        learner.net(torch.randn(2, 784))


def test_labels_must_match_the_batch():
    learner = build_learner("iclr_mnist_fc", RuleConfig(rule="bp"))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        learner(torch.randn(2, 1, 28, 28), torch.tensor([0, 1, 2]))


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet50'; known: .*iclr_cifar_lc"):
        build_network("resnet50")


def test_unknown_rule():
    with pytest.raises(ValueError, match=r"unknown rule 'hebb'; known: bp, fa, dfa, dtp, sdtp, aosdtp"):
        build_rule(RuleConfig(rule="hebb"))


@pytest.mark.parametrize(
    "rule,kwargs,message",
    [
        ("bp", {"inverse_loss": "denoising"}, r"algorithm.inverse_loss='denoising' does not apply to rule 'bp'"),
        ("bp", {"schedule": "alternating"}, r"algorithm.schedule='alternating' does not apply to rule 'bp'"),
        ("fa", {"sigma": 0.1}, r"algorithm.sigma=0.1 does not apply to rule 'fa'"),
        ("sdtp", {"alpha": 0.1}, r"algorithm.alpha applies to rule 'dtp' only, not 'sdtp'"),
        ("dtp", {"aux_dim": 8}, r"algorithm.aux_dim applies to rule 'aosdtp' only"),
        ("sdtp", {"schedule": "sometimes"}, r"algorithm.schedule must be one of \('parallel', 'alternating'\)"),
        ("dtp", {"inverse_loss": "l1"}, r"algorithm.inverse_loss must be one of"),
        ("sdtp", {"sigma": -1.0}, r"algorithm.sigma must be a finite number >= 0"),
        ("dtp", {"alpha": 0.0}, r"algorithm.alpha must be a finite number > 0"),
        ("aosdtp", {"aux_dim": 0}, r"algorithm.aux_dim must be >= 1"),
    ],
)
def test_option_that_does_not_apply(rule, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_rule(RuleConfig(rule=rule, **kwargs))


def test_phase_needs_inverse_weights():
    learner = build_learner("iclr_mnist_fc", RuleConfig(rule="fa"))
    with pytest.raises(ValueError, match="rule 'fa' has no inverse weights"):
        learner(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), phase="inverse")


def test_tp_rule_on_a_net_without_inverses():
    from bioscale.algorithms import Learner

    with pytest.raises(ValueError, match=r"needs inverses g_l for layers \[2, 3"):
        Learner(build_network("iclr_mnist_lc"), build_rule(RuleConfig(rule="sdtp")))
