"""Learning rules as block-boundary feedback. A rule says, for each block, how its output
h_l is connected to its input in the graph (`hidden`, `top`) and which inverse losses
train the feedback path (`inverse_losses`). The training step is always
`loss.backward(); optimizer.step()`.

    BP      plain autograd
    FA      autograd with a fixed random B_l in place of W_l for every input gradient
    DFA     every hidden layer gets B_l·e from the output error e
    DTP     difference targets below; penultimate target h − α ∂L/∂h (L summed over the batch)
    SDTP    difference targets everywhere; top target = one-hot label in probability space
    AO-SDTP SDTP whose output is [o, z], z a fixed random projection of h_{L-1}
    SIGNSYM, KP  FA whose B_l follows W_l (sign-symmetry, Kolen–Pollack): `algorithms.fa_variants`
    LDRL, DRL  DTP with difference-reconstruction-trained inverses: `algorithms.drl`

All rules by name: `algorithms.registry` (`RULE_CLASSES`, `build_rule`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F

from bioscale.algorithms.config import DRL_RULES, INVERSE_LOSSES, SCHEDULES, TP_RULES, RuleConfig
from bioscale.algorithms.feedback import DifferenceTarget, DirectFeedback, FeedbackTrace, FixedTopSignal, ScaleGrad
from bioscale.algorithms.squared_error import half_squared_error
from bioscale.models.init import glorot_uniform_

PHASES = ("both", "forward", "inverse")


def gaussian_like(h: torch.Tensor, sigma: float) -> torch.Tensor:
    """N(0, σ²) noise shaped like h and laid out like h in memory (LC activations are NCHW
    views of (H, W, C, N) memory). Drawn contiguously then permuted: `randn_like` on such a
    view takes normal_'s slow strided path (~10× slower, measured), and a mismatched layout
    would make `h + ε` and the next layer's input conversion strided too."""
    order = sorted(range(h.dim()), key=lambda d: h.stride(d), reverse=True)
    draw = torch.empty([h.shape[d] for d in order], dtype=h.dtype, device=h.device).normal_(0.0, sigma)
    return draw.permute([order.index(d) for d in range(h.dim())])


FEEDBACK_CHUNK = 1 << 22
"""Elements drawn per host chunk by `glorot_feedback` (32 MiB of float64)."""


def glorot_feedback(
    shape, fan_in: int, fan_out: int, generator: torch.Generator, dtype: torch.dtype, device
) -> torch.Tensor:
    """A fixed random feedback matrix, Glorot-uniform, built on `device` in `dtype`.

    Drawn in float64 from the CPU `generator` (so every rank and every device gets the same
    values from the seed) but in chunks of `FEEDBACK_CHUNK` elements, each cast and copied
    to the target tensor: host memory stays at one chunk instead of a float64 copy of the
    whole matrix (gigabytes for the full-width ImageNet nets). CPU `uniform_` draws
    serially, so the values are bit-identical to one float64 draw of the whole tensor cast
    to `dtype` (what this built before; tests/algorithms/test_feedback_init.py checks it)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for start in range(0, flat.numel(), FEEDBACK_CHUNK):
        n = min(FEEDBACK_CHUNK, flat.numel() - start)
        chunk = glorot_uniform_(torch.empty(n, dtype=torch.float64), fan_in, fan_out, generator)
        flat[start : start + n].copy_(chunk)
    return out


class Rule:
    name = ""
    target_propagation = False
    """Whether the rule learns inverses g_l (and so has an inverse loss, σ and a schedule):
    set for every subclass from `config.TP_RULES`, the one list of TP rules."""
    uses_output_inverse = False
    aux_dim = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.target_propagation = cls.name in TP_RULES

    def __init__(self, cfg: RuleConfig):
        self.cfg = cfg
        self.validate(cfg)

    # ---- configuration -------------------------------------------------------------------
    def validate(self, cfg: RuleConfig) -> None:
        if not self.target_propagation:
            for key in ("schedule", "inverse_loss", "sigma"):
                if getattr(cfg, key) is not None:
                    raise ValueError(
                        f"algorithm.{key}={getattr(cfg, key)!r} does not apply to rule {self.name!r} "
                        f"(it learns no inverses); remove it"
                    )
        if cfg.alpha is not None and self.name != "dtp":
            raise ValueError(f"algorithm.alpha applies to rule 'dtp' only, not {self.name!r}")
        if cfg.aux_dim is not None and self.name != "aosdtp":
            raise ValueError(f"algorithm.aux_dim applies to rule 'aosdtp' only, not {self.name!r}")
        if cfg.kp_decay is not None and self.name != "kp":
            raise ValueError(f"algorithm.kp_decay applies to rule 'kp' only, not {self.name!r}")
        for key in ("beta", "drl_noise_samples", "feedback_iterations"):
            if getattr(cfg, key) is not None and self.name not in DRL_RULES:
                raise ValueError(f"algorithm.{key} applies to rules {' and '.join(DRL_RULES)} only, not {self.name!r}")

    @property
    def schedule(self) -> str:
        return "parallel"

    def step_phases(self, phase: str) -> tuple[str, ...]:
        """The engine steps (each a forward, a backward and its optimizers' steps) that train
        one batch in `phase`: just `(phase,)`, except where a rule trains its inverses several
        times per batch (`algorithms.drl`, `feedback_iterations`)."""
        return (phase,)

    @property
    def separate_phases(self) -> bool:
        """Whether batches are trained by separate inverse-only and forward-only steps (the
        alternating schedule, or several inverse steps per batch) rather than one 'both' step:
        DDP then keeps one wrapper per phase, and one DeepSpeed engine cannot run it."""
        return self.schedule == "alternating" or len(self.step_phases("both")) > 1

    def phase_for_epoch(self, epoch: int) -> str:
        """'both' every batch, or for the alternating schedule one full epoch of inverse
        training (even epochs, starting with the first) then one of forward training."""
        if self.schedule == "alternating":
            return "inverse" if epoch % 2 == 0 else "forward"
        return "both"

    # ---- graph construction --------------------------------------------------------------
    def init_feedback(self, net, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fixed random feedback matrices this rule needs, by buffer name."""
        return {}

    def attach_feedback(self, net, generator: torch.Generator) -> None:
        """Add trained feedback parameters to the net's layers (Kolen–Pollack); after
        `init_feedback`, with the same generator. Nothing for the other rules."""

    def hidden(self, l: int, block, h_prev: torch.Tensor, trace: FeedbackTrace, feedback) -> torch.Tensor:
        raise NotImplementedError

    def top(self, l: int, block, h_prev: torch.Tensor, y: torch.Tensor, trace: FeedbackTrace, feedback) -> torch.Tensor:
        raise NotImplementedError

    def inverse_layers(self, depth: int) -> list[int]:
        """Layers l whose inverse g_l is trained (1-based; never the first)."""
        return []

    def inverse_losses(
        self,
        net,
        hs: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        noise: dict[int, torch.Tensor] | None,
        layers: Collection[int] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Inverse loss per layer l of `inverse_layers(net.depth)` (only those in `layers`, if
        given: a pipeline stage's own), from hs[l-1] = h_{l-1} (a list, or a stage's dict).
        `noise[l]`: the explicit noise (tests), of shape (N, *`noise_shape(net, l)`)."""
        return {}


class BP(Rule):
    name = "bp"

    def hidden(self, l, block, h_prev, trace, feedback):
        return block(h_prev)

    def top(self, l, block, h_prev, y, trace, feedback):
        return block(h_prev)


class FA(Rule):
    name = "fa"

    def init_feedback(self, net, generator):
        out = {}
        for l, block in enumerate(net.blocks, 1):
            if l > 1:  # the first layer's input gradient is never needed
                w = block.layer.weight
                out[f"feedback_{l}"] = glorot_feedback(
                    w.shape, block.layer.fan_in, block.layer.fan_out, generator, w.dtype, w.device
                )
        return out

    def hidden(self, l, block, h_prev, trace, feedback):
        return block(h_prev, feedback.get(f"feedback_{l}"))

    def top(self, l, block, h_prev, y, trace, feedback):
        return block(h_prev, feedback[f"feedback_{l}"])


class DFA(Rule):
    name = "dfa"

    def init_feedback(self, net, generator):
        out, classes = {}, net.num_classes
        for l, block in enumerate(net.blocks[:-1], 1):
            n, w = math.prod(block.out_shape), block.layer.weight
            out[f"feedback_{l}"] = glorot_feedback((classes, n), classes, n, generator, w.dtype, w.device)
        return out

    def hidden(self, l, block, h_prev, trace, feedback):
        if l == 1:
            return block(h_prev)
        return DirectFeedback.apply(block(h_prev.detach()), h_prev, feedback[f"feedback_{l - 1}"], trace, False)

    def top(self, l, block, h_prev, y, trace, feedback):
        return DirectFeedback.apply(block(h_prev.detach()), h_prev, feedback[f"feedback_{l - 1}"], trace, True)


class TargetPropagation(Rule):
    default_inverse_loss = "denoising"

    def validate(self, cfg):
        super().validate(cfg)
        if cfg.schedule is not None and cfg.schedule not in SCHEDULES:
            raise ValueError(f"algorithm.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
        if cfg.inverse_loss is not None and cfg.inverse_loss not in INVERSE_LOSSES:
            raise ValueError(f"algorithm.inverse_loss must be one of {INVERSE_LOSSES}, got {cfg.inverse_loss!r}")
        if cfg.sigma is not None and not (cfg.sigma >= 0 and math.isfinite(cfg.sigma)):
            raise ValueError(f"algorithm.sigma must be a finite number >= 0, got {cfg.sigma!r}")

    @property
    def schedule(self) -> str:
        return self.cfg.schedule or "parallel"

    @property
    def inverse_loss(self) -> str:
        return self.cfg.inverse_loss or self.default_inverse_loss

    @property
    def sigma(self) -> float:
        return 0.1 if self.cfg.sigma is None else float(self.cfg.sigma)

    def hidden(self, l, block, h_prev, trace, feedback):
        if l == 1:
            return block(h_prev)
        return DifferenceTarget.apply(block(h_prev.detach()), h_prev, block, trace)

    def inverse_layers(self, depth):
        return list(range(2, depth + 1 if self.uses_output_inverse else depth))

    def noise_shape(self, net, l: int) -> tuple[int, ...]:
        """Per-sample shape of an explicit `noise[l]`: here ε at h_{l-1} (`algorithms.drl`: more)."""
        return tuple(net.blocks[l - 1].in_shape)

    def inverse_losses(self, net, hs, noise, layers=None):
        """Σ_batch ½‖target − g_l(f_l(h_{l-1} + ε))‖², f under no_grad, h_{l-1} detached.
        `noise[l]` (optional) is the ε added to h_{l-1}; otherwise ε ~ N(0, σ²)."""
        losses = {}
        for l in self.inverse_layers(net.depth):
            if layers is not None and l not in layers:
                continue
            block, h_prev = net.blocks[l - 1], hs[l - 1].detach()
            eps = noise[l] if noise is not None and l in noise else gaussian_like(h_prev, self.sigma)
            h_noisy = h_prev + eps
            is_top = l == net.depth
            if is_top:
                with torch.no_grad():
                    p = torch.softmax(block(h_noisy), dim=1)
                    z = block.aux_output(h_noisy) if self.aux_dim else None
                rec = block.inverse(p, z) if z is not None else block.inverse(p)
            else:
                with torch.no_grad():
                    f_out = block(h_noisy)
                rec = block.inverse(f_out)
            target = h_prev if self.inverse_loss == "denoising" else h_noisy
            losses[l] = half_squared_error(rec, target)
        return losses


class DTP(TargetPropagation):
    name = "dtp"
    default_inverse_loss = "noise_preserving"  # Lee et al. 2015

    def validate(self, cfg):
        super().validate(cfg)
        if cfg.alpha is not None and not (cfg.alpha > 0 and math.isfinite(cfg.alpha)):
            raise ValueError(f"algorithm.alpha must be a finite number > 0, got {cfg.alpha!r}")

    @property
    def alpha(self) -> float:
        return 0.1 if self.cfg.alpha is None else float(self.cfg.alpha)

    def top(self, l, block, h_prev, y, trace, feedback):
        # ĥ_{L-1} = h_{L-1} − α ∂L/∂h_{L-1}: a gradient step through the output layer (as in DTP).
        return block(ScaleGrad.apply(h_prev, self.alpha))


class SDTP(TargetPropagation):
    name = "sdtp"
    uses_output_inverse = True

    def _top_delta(self, block, logits, h_prev, y):
        with torch.no_grad():
            # δ = g(p) − g(p − (p − onehot)); p − onehot in float32 at least (bf16 logits:
            # a near-one-hot p would round to the label), the difference of g's without
            # cancellation (`inverse_difference`)
            p = torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
            d = p - F.one_hot(y, p.shape[1]).to(p.dtype)
            z = block.aux_output(h_prev) if self.aux_dim else None
            return block.inverse_difference(p, d, z)

    def top(self, l, block, h_prev, y, trace, feedback):
        # ĥ_L = argmin L = onehot(y) in probability space; δ_{L-1} = g_L(p) − g_L(onehot).
        logits = block(h_prev.detach())
        delta = self._top_delta(block, logits, h_prev.detach(), y)
        return FixedTopSignal.apply(logits, h_prev, delta, trace)


class AOSDTP(SDTP):
    name = "aosdtp"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.aux_dim = 512 if cfg.aux_dim is None else int(cfg.aux_dim)
        if self.aux_dim < 1:
            raise ValueError(f"algorithm.aux_dim must be >= 1, got {cfg.aux_dim!r}")
