"""Typed configuration of a learning rule and of its two optimizers.

Fields left at `None` take the rule's default (see `algorithms.rules`); a field
that does not apply to the chosen rule must stay `None`, otherwise building the
rule raises (e.g. an inverse loss with BP)."""

from __future__ import annotations

from dataclasses import dataclass, field

RULES = ("bp", "fa", "dfa", "dtp", "sdtp", "aosdtp", "signsym", "kp", "ldrl", "drl")
TP_RULES = ("dtp", "sdtp", "aosdtp", "ldrl", "drl")
"""The target-propagation rules: those that learn inverses g_l (and so take an inverse
loss, σ and a schedule). `rules.Rule.target_propagation` is derived from this tuple."""
DRL_RULES = ("ldrl", "drl")
"""The TP rules whose inverses are trained with a difference reconstruction loss
(`algorithms.drl`); the only ones that take `beta`, `drl_noise_samples`, `feedback_iterations`."""
SCHEDULES = ("parallel", "alternating")
INVERSE_LOSSES = ("denoising", "noise_preserving")


@dataclass
class RuleConfig:
    rule: str = "sdtp"
    """Learning rule: bp | fa | dfa | dtp | sdtp | aosdtp | signsym (sign-symmetric feedback
    s·sign(W_l), Liao et al. 2016 / Xiao et al. 2018) | kp (Kolen–Pollack: trained feedback
    B_l that gets W_l's gradient, plus decay; Akrout et al. 2019) | ldrl (DTP whose inverses
    learn f_l's Jacobian transpose with the local difference reconstruction loss; Ernoult et
    al. 2022) | drl (DTP with the difference reconstruction loss; Meulemans et al. 2020)."""
    schedule: str | None = None
    """TP rules only: 'parallel' (forward and inverse losses every batch) or 'alternating'
    (one full epoch of inverse training, then one of forward training). Default parallel."""
    inverse_loss: str | None = None
    """TP rules only: 'denoising' ‖h − g(f(h+ε))‖² or 'noise_preserving' ‖(h+ε) − g(f(h+ε))‖².
    Default: noise_preserving for DTP (Lee et al.), denoising for SDTP/AO-SDTP (the paper)."""
    sigma: float | None = None
    """TP rules only: std of the Gaussian noise ε used to train the inverses. Default 0.1."""
    alpha: float | None = None
    """DTP only: step size of the penultimate target ĥ_{L-1} = h_{L-1} − α ∂L/∂h_{L-1}, with L the
    loss *summed* over the batch (Lee et al. used the batch mean: their α equals ours × batch). Default 0.1."""
    aux_dim: int | None = None
    """AO-SDTP only: units of the fixed random auxiliary output z = R h_{L-1}. Default 512."""
    kp_decay: float | None = None
    """KP only: decoupled weight decay λ of W_l and B_l for every layer l ≥ 2 (those with a
    feedback matrix): each step p ← p − lr·λ·p before the Adam update (torch's
    `decoupled_weight_decay`, AdamW), so B_l − W_l shrinks by exactly (1 − lr·λ) per step
    (W and B get equal gradients, hence equal Adam states and updates). Biases and W_1 are
    not decayed; optim.forward.weight_decay does not apply to the decayed weights. Default 0.1."""
    beta: float | None = None
    """LDRL/DRL only: step of the output target ĥ_L = o − β ∂L/∂o in logit space (L summed over
    the batch, so ∂L/∂o = softmax(o) − onehot per sample, as in Ernoult et al.'s code, which sums
    too); the target reaches h_{L-1} through the trained output inverse g_L. Default 0.7 (theirs)."""
    drl_noise_samples: int | None = None
    """LDRL/DRL only: K, the noise samples per layer and batch over which the difference
    reconstruction loss is averaged (a lower-variance estimate for K times the inverse compute).
    Default 1 (Ernoult et al.'s `feedback_samples_per_iteration`)."""
    feedback_iterations: int | None = None
    """LDRL/DRL only: K, inverse-optimizer steps per batch. K > 1: K inverse-only steps (each
    a forward pass without graph, the inverse losses on fresh noise, an inverse-optimizer step),
    then one forward-only step — Ernoult et al.'s order (they used 20–55 per layer and batch);
    K + 1 forward passes per batch. Default 1: one merged step. Runs on the none, ddp and
    pipeline backends; DeepSpeed's one engine cannot idle the forward group (refused)."""
    feedback_seed: int = 1234
    """FA/DFA: seed of the fixed random feedback matrices; KP: of the initial B_l; AO-SDTP: of
    the auxiliary projection."""


@dataclass
class AdamConfig:
    lr: float = 1e-4
    """Learning rate (the paper searched log-uniform [1e-5, 3e-4])."""
    beta1: float = 0.9
    """Adam β1 (fixed to 0.9 in the paper)."""
    beta2: float = 0.999
    """Adam β2 (the paper searched {0.99, 0.999})."""
    eps: float = 1e-8
    """Adam ε (the paper searched {1e-4, 1e-6, 1e-8})."""
    weight_decay: float = 0.0
    """L2 weight decay (not used by the paper)."""


@dataclass
class OptimConfig:
    forward: AdamConfig = field(default_factory=AdamConfig)
    """Optimizer of the forward weights θ (every rule)."""
    inverse: AdamConfig = field(default_factory=AdamConfig)
    """Optimizer of the inverse (feedback) weights λ (TP rules only; ignored otherwise)."""
