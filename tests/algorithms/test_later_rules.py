"""Sign-symmetry and Kolen–Pollack: steps of the autograd rules equal the loop-by-loop
oracle (tests/algorithms/oracle_alignment.py) on every parameter, in float64 with SGD, on an
FC and an LC net; what crosses the boundary reads sign(W) only (signsym) and never W (kp);
B gets exactly W's gradient on dense, LC and conv layers; under Adam, B − W evolves by the
decoupled decay alone; the config keys are validated; KP's feedback-to-forward angle falls."""

from __future__ import annotations

import math

import pytest
import torch

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, Updater, build_learner, feedback_angles
from bioscale.algorithms.fa_variants import SignSym
from bioscale.algorithms.optim import param_groups
from tests.algorithms.oracle_alignment import LC, alignment_step

N, CLASSES, LR = 6, 5, 0.05
NETS = {
    # arch, input shape, oracle geometry per hidden layer (None = dense)
    "fc": ("neurips_mnist_fc", (16,), None),
    "lc": ("iclr_mnist_lc", (1, 10, 10), None),
}


def lc_geometries(shape):
    specs = [(3, 32, 2, "same"), (3, 16, 1, "same"), (3, 16, 1, "same"), (3, 10, 1, "valid")]
    out, in_shape = {}, shape
    for l, (k, o, s, pad) in enumerate(specs, 1):
        out[l] = LC(in_shape, o, k, s, pad)
        in_shape = (o, out[l].ho, out[l].wo)
    return out


def make(net, rule, decay=None):
    arch, shape, _ = NETS[net]
    cfg = RuleConfig(rule=rule, kp_decay=decay if rule == "kp" else None)
    learner = build_learner(arch, cfg, seed=3, dtype=torch.float64, input_shape=shape, num_classes=CLASSES)
    layers = lc_geometries(shape) if net == "lc" else {l: None for l in range(1, learner.net.depth)}
    layers[learner.net.depth] = None
    return learner, layers, shape


def snapshot(learner):
    params = {"W": {}, "b": {}, "B": {}}
    for l, block in enumerate(learner.net.blocks, 1):
        params["W"][l] = block.layer.weight.detach().clone()
        params["b"][l] = block.layer.bias.detach().clone()
        fb = getattr(block.layer, "feedback_weight", None)
        if fb is not None:
            params["B"][l] = fb.detach().clone()
    return params


def data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, *shape, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (N,), generator=g)


@pytest.mark.parametrize("net", ["fc", "lc"])
@pytest.mark.parametrize("rule,decay", [("signsym", None), ("kp", 0.0), ("kp", 0.3)])
def test_steps_match_oracle(net, rule, decay):
    learner, layers, shape = make(net, rule, decay)
    opt = torch.optim.SGD(param_groups(learner.forward_parameters()), lr=LR)
    lam = learner.rule.decay if rule == "kp" else 0.0
    for step in range(3):  # several steps: signsym's signs and KP's B move
        x, y = data(shape, seed=step)
        expected, delta = alignment_step(snapshot(learner), layers, x, y, rule, LR, decay=lam)
        opt.zero_grad()
        out = learner(x, y)
        for h in out.hidden:
            h.retain_grad()
        out.loss.backward()
        opt.step()
        got = snapshot(learner)
        for kind in expected:
            for l, want in expected[kind].items():
                diff = (got[kind][l] - want).abs().max().item()
                assert diff < 1e-10, f"step {step}: {kind}[{l}] differs from the oracle by {diff:.3g}"
        assert set(got["B"]) == (set(range(2, learner.net.depth + 1)) if rule == "kp" else set())
        for l, h in enumerate(out.hidden, 1):  # the signal arriving at h_l is the oracle's δ_l
            assert (h.grad - delta[l]).abs().max() < 1e-10, f"step {step}: signal at h_{l}"


@pytest.mark.parametrize("rule", ["signsym", "kp"])
def test_grad_scale_scales_every_gradient_exactly(rule):
    grads = {}
    for c in (1.0, 0.25):
        learner, _, shape = make("fc", rule)
        x, y = data(shape)
        (c * learner(x, y, grad_scale=c).loss).backward()
        grads[c] = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    for g1, gc in zip(grads[1.0], grads[0.25]):
        assert torch.allclose(gc, 0.25 * g1, rtol=1e-12, atol=1e-15)


ARCHS = [("neurips_mnist_fc", (12,)), ("iclr_mnist_lc", (1, 12, 12)), ("iclr_mnist_conv", (1, 12, 12))]


@pytest.mark.parametrize("arch,shape", ARCHS)
def test_kp_feedback_gets_exactly_the_weight_gradient(arch, shape):
    learner = build_learner(arch, RuleConfig(rule="kp"), dtype=torch.float64, input_shape=shape)
    x, y = torch.randn(3, *shape, dtype=torch.float64), torch.tensor([0, 4, 9])
    learner(x, y).loss.backward()
    for l, block in enumerate(learner.net.blocks, 1):
        fb = getattr(block.layer, "feedback_weight", None)
        if l == 1:
            assert fb is None  # no B_1: the first layer's input gradient is never used
            continue
        assert fb.grad is not None and torch.equal(fb.grad, block.layer.weight.grad), f"layer {l}"
        assert fb.grad.data_ptr() != block.layer.weight.grad.data_ptr()  # own tensors


def _layers():
    from bioscale.models.conv import Conv2dSame
    from bioscale.models.dense import Dense
    from bioscale.models.locally_connected import LocallyConnected2d

    kw = dict(dtype=torch.float64)
    return [
        (Dense(12, 7, **kw), (12,)),
        (LocallyConnected2d(3, 4, (7, 7), 3, 2, "same", **kw), (3, 7, 7)),
        (Conv2dSame(3, 4, (7, 7), 3, 2, "same", **kw), (3, 7, 7)),
    ]


@pytest.mark.parametrize("index", range(3))
def test_signsym_signal_reads_the_signs_only(index):
    """What signsym sends down through a layer is unchanged when |W| changes with its signs
    kept (so it cannot depend on |W|), and changes when signs flip."""
    layer, shape = _layers()[index]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)

    def signal():
        xi = x.clone().requires_grad_(True)
        out = layer(xi, SignSym.feedback_weight(layer))
        out.backward(torch.ones_like(out) + 0.1 * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin())
        return xi.grad

    ref = signal()
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape, generator=g, dtype=torch.float64) * 5 + 0.01)
    assert torch.equal(signal(), ref)
    with torch.no_grad():
        layer.weight.view(-1)[::5].neg_()  # spread out: some taps of an LC position read only padding
    assert not torch.equal(signal(), ref)
    fb = SignSym.feedback_weight(layer)
    scale = math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
    assert torch.equal(fb, torch.sign(layer.weight) * scale)


def test_kp_difference_decays_exactly_under_adam():
    """W and B get equal gradients, so equal Adam states and updates: with decoupled decay λ,
    B − W ← (1 − lr·λ)(B − W) every step, while W itself moves."""
    lr, lam = 1e-2, 0.5
    learner = build_learner(
        "neurips_mnist_fc", RuleConfig(rule="kp", kp_decay=lam), dtype=torch.float64, input_shape=(16,)
    )
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=lr)))
    layers = [b.layer for b in learner.net.blocks[1:]]
    for step in range(5):
        x, y = data((16,), seed=step)
        before = [(lay.feedback_weight - lay.weight).detach().clone() for lay in layers]
        w0 = [lay.weight.detach().clone() for lay in layers]
        updater.step(x, y)
        for lay, d0, w in zip(layers, before, w0):
            d1 = (lay.feedback_weight - lay.weight).detach()
            assert (d1 - (1 - lr * lam) * d0).abs().max() < 1e-12
            assert (lay.weight.detach() - w).abs().max() > 1e-4  # W did learn
    biases = {id(b.layer.bias) for b in learner.net.blocks}
    decayed = [g for g in updater.forward.param_groups if g.get("decoupled_weight_decay")]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == lam
    assert not biases & {id(p) for p in decayed[0]["params"]}
    assert id(learner.net.blocks[0].layer.weight) not in {id(p) for p in decayed[0]["params"]}


@pytest.mark.parametrize(
    "cfg,message",
    [
        (dict(rule="fa", kp_decay=0.1), "algorithm.kp_decay applies to rule 'kp' only"),
        (dict(rule="signsym", kp_decay=0.1), "algorithm.kp_decay applies to rule 'kp' only"),
        (dict(rule="kp", kp_decay=-1.0), "algorithm.kp_decay must be a finite number >= 0"),
        (dict(rule="kp", kp_decay=math.inf), "algorithm.kp_decay must be a finite number >= 0"),
        (dict(rule="kp", sigma=0.1), "algorithm.sigma=0.1 does not apply to rule 'kp'"),
        (dict(rule="signsym", alpha=0.1), "algorithm.alpha applies to rule 'dtp' only"),
    ],
)
def test_bad_keys_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_learner("neurips_mnist_fc", RuleConfig(**cfg), input_shape=(16,))


def test_help_config_documents_kp_decay():
    from bioscale.training.config_loader import describe

    text = describe()
    assert "algorithm.kp_decay: float | None = None" in text
    assert "signsym" in text and "kp (Kolen–Pollack" in text


def test_kp_feedback_angle_falls():
    """Over a short KP run on digits the angle between B_l and W_l falls at every layer."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0 - 0.3) / 0.4
    y = torch.tensor(d.target)
    learner = build_learner("iclr_mnist_lc", RuleConfig(rule="kp", kp_decay=1.0), seed=0, input_shape=(1, 8, 8))
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-3)))
    start = feedback_angles(learner)
    assert set(start) == set(range(2, learner.net.depth + 1))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 31, 32):
            updater.step(x[perm[i : i + 32]], y[perm[i : i + 32]])
    end = feedback_angles(learner)
    for l in start:
        assert end[l] < start[l] - 5.0, f"layer {l}: angle {start[l]:.1f}° -> {end[l]:.1f}°"
