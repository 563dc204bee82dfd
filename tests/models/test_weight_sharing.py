"""Weight sharing of LC layers (`share_weights_`, `model.weight_sharing=instant`; the
anti-Hebbian `hebbian_share_`, `dynamic`, keeps the mean and pulls every position to it).
Instant sharing:
after a sharing event every position holds the same filter and the layer computes the
convolution with that filter (an `nn.Conv2d` on the input padded by the LC layer's
TensorFlow-style rules, written out here independently) to 1e-6; the transpose layer
becomes its conv twin's transpose; a KP layer's B is shared with its W; sharing starts from
tied weights (the init scale survives); the trainer shares every N steps (and logs KP's
feedback angle); the config keys are checked."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioscale.models.conv import ConvTranspose2dSame
from bioscale.models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

GEOMETRIES = [
    # in_channels, out_channels, input (H, W), kernel, stride, padding
    (3, 5, (9, 9), 3, 2, "same"),
    (2, 4, (8, 7), 4, 1, "same"),  # even kernel: TensorFlow puts the extra pixel bottom/right
    (3, 4, (8, 8), 3, 2, "valid"),
    (2, 3, (7, 6), (3, 2), (2, 1), "same"),
]


def tf_padding(n, k, s, mode):
    if mode == "valid":
        return 0, 0
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def assert_one_filter(weight):
    assert torch.equal(weight, weight[:1].expand_as(weight)), "positions hold different filters"


@pytest.mark.parametrize("c,o,size,k,s,pad", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_lc_layer_is_a_convolution(c, o, size, k, s, pad, dtype):
    torch.manual_seed(0)
    layer = LocallyConnected2d(c, o, size, k, s, pad, dtype=dtype)
    with torch.no_grad():
        layer.bias.normal_()
    layer.share_weights_()
    assert_one_filter(layer.weight)
    assert torch.equal(layer.bias, layer.bias[:, :1, :1].expand_as(layer.bias))
    (kh, kw), (sh, sw) = pair(k), pair(s)
    conv = nn.Conv2d(c, o, (kh, kw), stride=(sh, sw), padding=0, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[0].view(o, kh, kw, c).permute(0, 3, 1, 2))
        conv.bias.copy_(layer.bias[:, 0, 0])
    pt, pb = tf_padding(size[0], kh, sh, pad)
    pl, pr = tf_padding(size[1], kw, sw, pad)
    x = torch.randn(4, c, *size, dtype=dtype)
    want = conv(F.pad(x, (pl, pr, pt, pb)))
    got = layer(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-6


def test_sharing_is_the_average_over_positions():
    torch.manual_seed(1)
    layer = LocallyConnected2d(2, 3, (6, 6), 3, 1, "same", dtype=torch.float64)
    before = layer.weight.detach().clone()
    layer.share_weights_()
    for slot in [(0, 0), (2, 17), (1, 5)]:
        assert torch.allclose(layer.weight[7][slot], before[(slice(None), *slot)].mean(), atol=1e-15)


def test_tied_start_keeps_the_init_scale():
    """Weight sharing starts from position 0's filter everywhere: averaging independent
    random filters instead would shrink them by ~sqrt(positions)."""
    from bioscale.training.weight_sharing import tie_weights

    torch.manual_seed(3)
    layer = LocallyConnected2d(3, 8, (14, 14), 3, 1, "same", dtype=torch.float64)
    untied = layer.weight.detach().clone()
    assert tie_weights(layer) == 1
    assert_one_filter(layer.weight)
    assert torch.equal(layer.weight[0], untied[0])
    layer.share_weights_()  # a sharing event right after the tied start changes nothing (but rounding)
    assert torch.allclose(layer.weight[5], untied[0], rtol=0, atol=1e-15)
    averaged = untied.mean(0)  # what sharing an untied init would leave
    assert averaged.std() < 0.15 * untied.std() < 0.15 * 1.5 * layer.weight.std()


def test_shared_transpose_is_the_conv_twins_transpose():
    torch.manual_seed(2)
    args = (3, 4, (9, 9), 3, 2, "same")
    t = LocallyConnectedTranspose2d(*args, dtype=torch.float64)
    with torch.no_grad():
        t.bias.normal_()
    t.share_weights_()
    assert_one_filter(t.weight)
    twin = ConvTranspose2dSame(*args, dtype=torch.float64)
    with torch.no_grad():
        twin.weight.copy_(t.weight[0].view(4, 3, 3, 3).permute(0, 3, 1, 2))
        twin.bias.copy_(t.bias[:, :1, :1])
    y = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert (t(y) - twin(y)).abs().max().item() < 1e-12


def test_kp_feedback_is_shared_with_the_weight():
    from bioscale.algorithms import RuleConfig, build_learner
    from bioscale.training.weight_sharing import share_weights

    learner = build_learner("iclr_mnist_lc", RuleConfig(rule="sdtp"), input_shape=(1, 8, 8))
    assert share_weights(learner) == 4 + 3  # four forward LC layers, the inverses of layers 2-4
    for block in learner.net.blocks[:-1]:
        assert_one_filter(block.layer.weight)
    kp = build_learner("iclr_mnist_lc", RuleConfig(rule="kp"), input_shape=(1, 8, 8))
    share_weights(kp)
    for block in kp.net.blocks[1:-1]:
        assert_one_filter(block.layer.feedback_weight)


def test_weight_sharing_config_keys():
    from bioscale.training.config import ConfigError, ExperimentConfig
    from bioscale.training.config_loader import config_from_dict, describe, load_config

    assert load_config(None, ["model.weight_sharing=instant"]).model.sharing_every_steps() == 10
    with pytest.raises(ConfigError, match="must be one of none, instant, dynamic"):
        load_config(None, ["model.weight_sharing=hebbian"])
    with pytest.raises(ConfigError, match="applies to model.weight_sharing=instant or dynamic only"):
        load_config(None, ["model.weight_sharing_every_steps=5"])
    with pytest.raises(ConfigError, match="model.weight_sharing_rate.*applies to model.weight_sharing=dynamic only"):
        load_config(None, ["model.weight_sharing=instant", "model.weight_sharing_rate=0.5"])
    with pytest.raises(ConfigError, match=r"model.weight_sharing_rate.*must be in \(0, 1\], got 1.5"):
        load_config(None, ["model.weight_sharing=dynamic", "model.weight_sharing_rate=1.5"])
    with pytest.raises(ConfigError, match="model.weight_sharing_iterations.*must be >= 1"):
        load_config(None, ["model.weight_sharing=dynamic", "model.weight_sharing_iterations=0"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        load_config(None, ["model.weight_sharing=instant", "model.weight_sharing_every_steps=0"])
    text = describe()
    assert "model.weight_sharing: str = 'none'" in text
    assert "model.weight_sharing_every_steps: int | None = None" in text
    # a merged config (every key set, as the runner resubmits it) loads back
    cfg = load_config(None, ["model.weight_sharing=instant", "model.weight_sharing_every_steps=4"])
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(ExperimentConfig().to_dict()) == ExperimentConfig()

    from bioscale.training.preflight import check_config

    cfg = load_config(None, ["model.weight_sharing=instant", "model.arch=iclr_mnist_fc", "out=x", "data.path=y"])
    with pytest.raises(ConfigError, match="needs locally-connected layers"):
        check_config(cfg)


def _spread(t: torch.Tensor) -> float:
    return (t - t.mean(0, keepdim=True)).norm().item()


@pytest.mark.parametrize("transpose", [False, True])
def test_dynamic_sharing_keeps_the_mean_filter_and_pulls_positions_to_it(transpose):
    """Anti-Hebbian steps on shared random inputs (`hebbian_share_`): the mean over
    positions of every weight and bias is unchanged (float64, to rounding), the spread
    around it shrinks by about sqrt((1 − γ)² + γ²) per iteration (γ = 0.5: 0.71), and
    enough iterations leave every position holding (nearly) the instant-shared filter,
    so the layer computes (nearly) the convolution."""
    torch.manual_seed(0)
    cls = LocallyConnectedTranspose2d if transpose else LocallyConnected2d
    layer = cls(3, 4, (7, 7), 3, 1, "same", dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    exact = LocallyConnectedTranspose2d if transpose else LocallyConnected2d
    target = exact(3, 4, (7, 7), 3, 1, "same", dtype=torch.float64)
    target.load_state_dict(layer.state_dict())
    target.share_weights_()
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    g = torch.Generator().manual_seed(0)
    layer.hebbian_share_(0.5, 1, g)
    one = _spread(layer.weight) / _spread(w0)
    assert 0.4 < one < 0.95, one  # one iteration: a partial pull, not the exact average
    layer.hebbian_share_(0.5, 59, g)
    assert torch.allclose(layer.weight.mean(0), w0.mean(0), atol=1e-12, rtol=0)
    assert torch.allclose(layer.bias.mean((1, 2)), b0.mean((1, 2)), atol=1e-12, rtol=0)
    assert _spread(layer.weight) < 1e-6 * _spread(w0)
    assert _spread(layer.bias.flatten(1).t()) < 1e-6 * _spread(b0.flatten(1).t())
    x = torch.randn(2, *((4, 7, 7) if transpose else (3, 7, 7)), dtype=torch.float64)
    torch.testing.assert_close(layer(x), target(x), rtol=0, atol=1e-6)


def test_dynamic_sharing_shares_a_kp_feedback_with_its_weight():
    from bioscale.algorithms import RuleConfig, build_learner
    from bioscale.training.weight_sharing import dynamic_sharing, share_weights

    kp = build_learner("iclr_mnist_lc", RuleConfig(rule="kp"), input_shape=(1, 8, 8), dtype=torch.float64)
    layer = kp.net.blocks[1].layer
    before = _spread(layer.feedback_weight)
    share_weights(kp, share=dynamic_sharing(0.5, 40, seed=0, step=3))
    assert _spread(layer.feedback_weight) < 1e-4 * before


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tests.datasets import prepare_small_fashion

    return prepare_small_fashion(tmp_path_factory.mktemp("fashion"), n_train=400, n_test=100, val_size=100)


@pytest.mark.parametrize("mode", ["instant", "dynamic"])
def test_trainer_shares_every_n_steps_and_logs_kp_angles(shards, tmp_path, mode):
    from bioscale.training.config_loader import load_config
    from bioscale.training.trainer import Trainer
    from bioscale.training.weight_sharing import lc_layers
    from tests.training.test_trainer import scalars

    overrides = [
        "model.arch=iclr_mnist_lc",
        "algorithm.rule=kp",
        f"model.weight_sharing={mode}",
        "model.weight_sharing_every_steps=3",
        *(["model.weight_sharing_iterations=30"] if mode == "dynamic" else []),
        "data.batch_size_per_rank=32",
        "data.num_workers=0",
        "train.epochs=1",
        "train.max_steps_per_epoch=6",  # steps 3 and 6 share: the run ends on a sharing event
        "train.log_every_steps=2",
        "train.angle_every_steps=2",
        "optim.forward.lr=0.001",
        f"data.path={shards}",
        f"out={tmp_path / 'run'}",
    ]
    trainer = Trainer(load_config(None, overrides))
    result = trainer.fit()
    assert result["epochs_completed"] == 1 and math.isfinite(result["val_top1_err"])
    layers = lc_layers(trainer.learner)
    assert len(layers) == 4

    def shared(weight):  # dynamic: 30 iterations of γ = 0.5 leave ~0.71^30 ≈ 3e-5 of the spread
        if mode == "instant":
            assert_one_filter(weight)
        else:
            assert _spread(weight) < 1e-3 * weight.norm().item()

    for layer in layers:
        shared(layer.weight)
        # tied start: the shared filter keeps about the layer's Glorot scale (an untied start
        # averaged over 196 or 36 positions would leave ~1/14 or ~1/6 of it)
        glorot_std = math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
        assert layer.weight.std().item() > 0.5 * glorot_std
        if getattr(layer, "feedback_weight", None) is not None:
            shared(layer.feedback_weight)
    tags = scalars(tmp_path / "run" / "tb")
    for l in (2, 3, 4, 5):
        angles = tags[f"angle/feedback_vs_forward/l{l}"]
        # random B_l against W_l: about 90° (tied filters: fewer independent entries, wider spread)
        assert [step for step, _ in angles] == [2, 4, 6] and all(60 < a < 120 for _, a in angles), angles
