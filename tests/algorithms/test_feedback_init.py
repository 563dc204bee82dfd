"""FA/DFA feedback matrices: built on the weights' device in their dtype, chunk by chunk,
with exactly the values of one float64 draw of the whole matrix cast to that dtype."""

from __future__ import annotations

import math

import pytest
import torch

from bioscale.algorithms import build_learner, rules
from bioscale.algorithms.config import RuleConfig
from bioscale.models.init import glorot_uniform_


def _reference(shape, fan_in, fan_out, seed, dtype):
    """What init_feedback built before: the whole matrix drawn in float64 on the host, cast."""
    b = torch.empty(shape, dtype=torch.float64)
    glorot_uniform_(b, fan_in, fan_out, torch.Generator().manual_seed(seed))
    return b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_chunked_draw_equals_one_draw(monkeypatch, dtype):
    monkeypatch.setattr(rules, "FEEDBACK_CHUNK", 7)  # many chunks and a ragged last one
    got = rules.glorot_feedback((5, 3, 4), 12, 20, torch.Generator().manual_seed(3), dtype, "cpu")
    assert got.dtype == dtype and got.shape == (5, 3, 4)
    assert torch.equal(got, _reference((5, 3, 4), 12, 20, 3, dtype))


def test_meta_device_allocates_no_host_matrix():
    got = rules.glorot_feedback((1000, 1000), 10, 10, torch.Generator().manual_seed(0), torch.float32, "meta")
    assert got.device.type == "meta" and got.dtype == torch.float32


@pytest.mark.parametrize("rule", ["fa", "dfa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_learner_feedback_matches_the_float64_draw(monkeypatch, rule, dtype):
    monkeypatch.setattr(rules, "FEEDBACK_CHUNK", 1000)
    learner = build_learner("neurips_mnist_lc", RuleConfig(rule=rule, feedback_seed=5), seed=1, dtype=dtype)
    g = torch.Generator().manual_seed(5)  # the learner draws its matrices from this, in layer order
    net = learner.net
    for l, block in enumerate(net.blocks, 1):
        if rule == "fa" and l > 1:
            shape, fans = block.layer.weight.shape, (block.layer.fan_in, block.layer.fan_out)
        elif rule == "dfa" and l < net.depth:
            n = math.prod(block.out_shape)
            shape, fans = (net.num_classes, n), (net.num_classes, n)
        else:
            continue
        want = torch.empty(shape, dtype=torch.float64)
        glorot_uniform_(want, *fans, g)
        got = learner.feedback[f"feedback_{l}"]
        assert got.dtype == dtype and got.device == block.layer.weight.device
        assert torch.equal(got, want.to(dtype)), l
