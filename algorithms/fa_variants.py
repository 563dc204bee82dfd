"""The later feedback-alignment variants, each FA with a feedback path that tracks the forward
weights without copying them into the backward pass: sign-symmetry (B = s·sign(W), rebuilt
every forward) and Kolen–Pollack (B trained on W's gradient plus decay, so B → W). Both
pass B to the layer as a callable it evaluates inside its own module call, where ZeRO-3 has
gathered the layer's parameters. The paper's rules are in rules.py."""

from __future__ import annotations

import math

import torch

from bioscale.algorithms.rules import Rule, glorot_feedback


class SignSym(Rule):
    """Sign-symmetry (Liao, Leibo & Poggio 2016, "uniform sign-concordant feedback"; Xiao et
    al. 2018 at ImageNet scale): FA whose B_l = s_l·sign(W_l), rebuilt from the forward
    weights' signs at every forward pass, so it follows W_l's sign flips during training.

    The input gradient at every layer l ≥ 2 is (δ ⊙ σ′) @ B_l, through the same boundary as
    FA (the layer's feedback-weight path, which does not save W_l: the backward never reads
    W). Only sign(W_l) is read, never |W_l|. Scale: Liao et al. found magnitudes irrelevant
    *with* batch normalisation or Batch Manhattan updates, and Xiao et al. use batch-normalised
    nets; the paper's nets have neither, so the constant matters for the signal's size. We
    take s_l = sqrt(2 / (fan_in + fan_out)), the standard deviation of W_l's Glorot-uniform
    init (the layer's own fans, as FA's B uses): then ‖B_l‖ = ‖W_l‖ at initialisation in
    expectation and equals the norm of FA's B. s_l depends on the layer's shape only.
    Ambiguous in the sources: the scale (here fixed, not tracking ‖W‖, which would transport
    a magnitude) and sign(0) (= 0 here; a zero weight sends nothing back).

    B is formed inside the layer's module call (the rule passes `feedback_weight` as a callable
    the layer evaluates), where ZeRO-3 has gathered W."""

    name = "signsym"

    @staticmethod
    def feedback_weight(layer) -> torch.Tensor:
        """B = s·sign(W) for `layer` (a Dense / LC / conv layer with Glorot fans); the layer
        calls it inside its module call (`GlorotInit.resolve_feedback`)."""
        scale = math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
        return torch.sign(layer.weight.detach()).mul_(scale)

    def hidden(self, l, block, h_prev, trace, feedback):
        if l == 1:  # the first layer's input gradient is never needed
            return block(h_prev)
        return block(h_prev, self.feedback_weight)  # evaluated inside the layer's module call

    def top(self, l, block, h_prev, y, trace, feedback):
        return block(h_prev, self.feedback_weight)


def _own_feedback(layer) -> torch.Tensor:
    """KP's B_l: the layer's own trained feedback parameter."""
    return layer.feedback_weight


class KP(Rule):
    """Kolen–Pollack (Kolen & Pollack 1994, as adapted by Akrout et al. 2019, §4): FA whose
    feedback B_l (W_l's shape, Glorot-random at the start from `feedback_seed`, for every
    layer l ≥ 2) is trained. Akrout et al.'s paired updates, with the layer's error δ_l and
    input h_{l-1}:

        ΔW_l = −η δ_l h_{l-1}ᵀ − λ W_l,     ΔB_l = −η δ_l h_{l-1}ᵀ − λ B_l

    so W_l − B_l = (1 − λ)^t (W_l(0) − B_l(0)) → 0, without B ever reading W: B's update
    uses only what is local to the synapse (the same pre/post activity product) and B itself.

    What crosses the boundary: (δ ⊙ σ′) @ B_l, as in FA. B_l is an `nn.Parameter` attached
    to the layer as `layer.feedback_weight` (so it is one of the layer's parameters: in the
    forward optimizer, in checkpoints, in a pipeline stage's and a ZeRO shard's share, and
    gathered with the layer's weight under ZeRO-3: the rule passes a callable the layer
    evaluates inside its own module call, never B as a module input). The layer's
    feedback-weight Function returns W's weight gradient also as B's gradient, so the step
    stays `loss.backward(); optimizer.step()`.

    Decay: `algorithm.kp_decay` = λ as *decoupled* decay of W_l and B_l, l ≥ 2, applied by
    the optimizer (torch Adam's `decoupled_weight_decay`: p ← p − lr·λ·p, then the Adam
    step). W and B then get equal gradients, hence equal Adam moments and bit-equal Adam
    updates, so B − W evolves by decay alone: (B − W) ← (1 − lr·λ)(B − W) every step, the
    relation above with λ_paper = lr·λ. Coupled L2 decay (λp added to the gradient) would
    make B's and W's Adam states differ and the difference evolve by Adam's normalisation.
    Under SGD the two coincide (the oracle test checks the equations above exactly).
    Ambiguous: Akrout et al. decay every weight with SGD+momentum; here biases and W_1 (no
    B_1) are not decayed."""

    name = "kp"

    def validate(self, cfg):
        super().validate(cfg)
        if cfg.kp_decay is not None and not (cfg.kp_decay >= 0 and math.isfinite(cfg.kp_decay)):
            raise ValueError(f"algorithm.kp_decay must be a finite number >= 0, got {cfg.kp_decay!r}")

    @property
    def decay(self) -> float:
        return 0.1 if self.cfg.kp_decay is None else float(self.cfg.kp_decay)

    def attach_feedback(self, net, generator):
        for l, block in enumerate(net.blocks, 1):
            if l == 1:  # the first layer's input gradient is never needed: no B_1
                continue
            layer, w = block.layer, block.layer.weight
            b = glorot_feedback(w.shape, layer.fan_in, layer.fan_out, generator, w.dtype, w.device)
            layer.register_parameter("feedback_weight", torch.nn.Parameter(b))
            # read by algorithms.optim: these two get decoupled decay λ (and nothing else does)
            layer.feedback_weight.decoupled_decay = self.decay
            w.decoupled_decay = self.decay

    def hidden(self, l, block, h_prev, trace, feedback):
        if l == 1:
            return block(h_prev)
        return block(h_prev, _own_feedback)  # evaluated inside the layer's module call (ZeRO-3)

    def top(self, l, block, h_prev, y, trace, feedback):
        return block(h_prev, _own_feedback)
