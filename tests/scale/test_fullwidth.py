"""The full-width ImageNet LC nets: registered names, All-CNN widths, parameter counts
(meta device: nothing allocated) and one TP step at reduced resolution.

models.fullwidth is imported inside the tests, not at collection: registering the nets
while pytest collects would add them to tests/models' "every ImageNet net, every rule"
(slow) parametrisation when that file is collected after this one — 10⁹-parameter
builds this machine cannot hold."""

from __future__ import annotations

import torch

from bioscale.algorithms import OptimConfig, RuleConfig, Updater, build_learner
from bioscale.models.architectures import ARCHITECTURES


def fullwidth():
    from bioscale.models import fullwidth as module  # registers the full-width names on import

    return module


def test_registered_with_all_cnn_widths():
    FULLWIDTH = fullwidth().FULLWIDTH
    assert set(FULLWIDTH) <= set(ARCHITECTURES)
    widths = {name: [layer[2] for layer in ARCHITECTURES[name].layers] for name in FULLWIDTH}
    assert widths["imagenet_lc_fullwidth_iclr"] == [96, 256, 384, 1024]
    assert widths["imagenet_lc_fullwidth_neurips"] == [96, 96, 256, 256, 384, 384, 1024]
    # only the widths change: kernels, strides, padding and pooling are the paper's
    for name, paper in zip(FULLWIDTH, ("iclr_imagenet_lc", "neurips_imagenet_lc")):
        strip = lambda layers: [(l[0], l[1], *l[3:]) for l in layers]  # noqa: E731
        assert strip(ARCHITECTURES[name].layers) == strip(ARCHITECTURES[paper].layers)


def test_parameter_counts_printed():
    FULLWIDTH, parameter_counts = fullwidth().FULLWIDTH, fullwidth().parameter_counts
    for name in FULLWIDTH:
        paper_name = name.replace("imagenet_lc_fullwidth_", "") + "_imagenet_lc"
        full, paper = parameter_counts(name), parameter_counts(paper_name)
        ratio = full["forward_weights"] / paper["forward_weights"]
        print(
            f"{name}: {full['forward_weights']:,} forward weights ({ratio:.1f}× {paper_name}), "
            f"{full['inverse_params']:,} inverse params"
        )
        assert full["forward_weights"] > 4 * paper["forward_weights"]
    assert parameter_counts("imagenet_lc_fullwidth_iclr")["forward_weights"] == 799_000_576


def test_one_sdtp_step_at_32px():
    fullwidth()
    learner = build_learner("imagenet_lc_fullwidth_neurips", RuleConfig(rule="sdtp"), input_shape=(3, 32, 32))
    updater = Updater(learner, OptimConfig())
    before = learner.net.blocks[0].layer.weight.detach().clone()
    out = updater.step(torch.randn(2, 3, 32, 32), torch.tensor([3, 999]))
    assert torch.isfinite(out.loss) and not torch.equal(before, learner.net.blocks[0].layer.weight)
