"""DTP with inverses trained by a *difference reconstruction* loss.

Both rules are DTP below the top (δ_{l-1} = g_l(h_l) − g_l(h_l − δ_l), `DifferenceTarget`)
with a first target in logit space that reaches h_{L-1} through a trained output inverse:

    ĥ_L = o − β ∂L/∂o = o − β (softmax(o) − onehot(y))      (L summed over the batch)
    δ_{L-1} = g_L(o) − g_L(ĥ_L)                               (g_L reads logits)

They differ only in the loss that trains g_l (l = 2..L), in `inverse_losses`:

    LDRL  Ernoult et al., ICML 2022 ("Towards scaling difference target propagation by
          learning backprop targets"): local, noise at h_{l-1} and at h_l.
    DRL   Meulemans et al., NeurIPS 2020 ("A theoretical framework for target
          propagation"): noise at h_{l-1}, carried to the output and back by DTP.

Sources read (facts only, no code copied): github.com/ernoult/scalingDTP,
target_prop/feedback_loss.py (`get_feedback_loss`) and target_prop/models/dtp.py (first
target, defaults); github.com/meulemansalex/theoretical_framework_for_target_propagation,
lib/dtpdrl_layers.py and lib/networks.py (`DTPDRLNetwork.compute_feedback_gradients`).

Explicit noise (tests): `noise[l]` is one tensor of shape (N, K, D), batch first so that it
slices with the batch (DDP ranks, pipeline micro-batches) like x: for sample n and draw k,
`noise[l][n, k]` is ε (h_{l-1}'s numel per sample, flattened) followed, for LDRL, by η (h_l's,
the logits at the top). `noise_shape` gives (K, D). Without it, ε, η ~ N(0, σ²) are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F

from bioscale.algorithms.feedback import FixedTopSignal
from bioscale.algorithms.rules import TargetPropagation, gaussian_like

Activations = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 at least: the losses sum products of O(σ) differences (bf16 autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class DifferenceReconstruction(TargetPropagation):
    """What LDRL and DRL share: the logit-space top target through g_L, the config keys
    (`beta`, `drl_noise_samples`, `feedback_iterations`) and the noise draws."""

    uses_output_inverse = True
    noise_at_output = False
    """Whether the loss also reads noise η at h_l (LDRL), besides ε at h_{l-1}."""

    def validate(self, cfg):
        super().validate(cfg)
        if cfg.inverse_loss is not None:
            raise ValueError(
                f"algorithm.inverse_loss={cfg.inverse_loss!r} does not apply to rule {self.name!r} "
                f"(its inverses are trained with its difference reconstruction loss); remove it"
            )
        if cfg.sigma is not None and not cfg.sigma > 0:
            # σ = 0 makes every term of the loss vanish: g_l would never learn
            raise ValueError(f"algorithm.sigma must be > 0 for rule {self.name!r}, got {cfg.sigma!r}")
        if cfg.beta is not None and not (cfg.beta > 0 and math.isfinite(cfg.beta)):
            raise ValueError(f"algorithm.beta must be a finite number > 0, got {cfg.beta!r}")
        for key in ("drl_noise_samples", "feedback_iterations"):
            value = getattr(cfg, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"algorithm.{key} must be an integer >= 1, got {value!r}")

    @property
    def beta(self) -> float:
        return 0.7 if self.cfg.beta is None else float(self.cfg.beta)

    @property
    def feedback_iterations(self) -> int:
        return 1 if self.cfg.feedback_iterations is None else int(self.cfg.feedback_iterations)

    def step_phases(self, phase: str) -> tuple[str, ...]:
        """K = `feedback_iterations` inverse steps per batch, then (where the phase trains
        θ) one forward step, as Ernoult et al. train the feedback weights before each forward
        update; each inverse step draws its own noise. K = 1 keeps the one merged step (the
        signals then read g_l before this batch's inverse update, not after)."""
        k = self.feedback_iterations
        if k == 1 or phase == "forward":
            return (phase,)
        return ("inverse",) * k + (("forward",) if phase == "both" else ())

    @property
    def noise_samples(self) -> int:
        return 1 if self.cfg.drl_noise_samples is None else int(self.cfg.drl_noise_samples)

    def top(self, l, block, h_prev, y, trace, feedback):
        logits = block(h_prev.detach())
        with torch.no_grad():
            # ∂L/∂o of the summed cross-entropy, per sample (what the output layer's gradient
            # is), in float32 at least; δ_{L-1} = g_L(o) − g_L(o − β e) without cancellation
            p = torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
            e = p - F.one_hot(y, p.shape[1]).to(p.dtype)
            delta = block.inverse_difference(logits, self.beta * e)
        return FixedTopSignal.apply(logits, h_prev, delta, trace)

    def noise_shape(self, net, l: int) -> tuple[int, ...]:
        block = net.blocks[l - 1]
        numel = math.prod(block.in_shape) + (math.prod(block.out_shape) if self.noise_at_output else 0)
        return (self.noise_samples, numel)

    def _draws(
        self, l: int, like: Sequence[torch.Tensor], noise: dict[int, torch.Tensor] | None
    ) -> list[list[torch.Tensor]]:
        """K lists of noise tensors for layer l, shaped like the tensors `like` (h_{l-1}[, h_l])."""
        if noise is None or l not in noise:
            return [[gaussian_like(h, self.sigma) for h in like] for _ in range(self.noise_samples)]
        given, sizes = noise[l], [h[0].numel() for h in like]
        if given.dim() != 3 or given.shape[0] != like[0].shape[0] or given.shape[2] != sum(sizes):
            raise ValueError(
                f"rule {self.name!r}: noise[{l}] must have shape (N, K, {sum(sizes)}), got {tuple(given.shape)}"
            )
        return [
            [part.reshape(h.shape).to(h.dtype) for part, h in zip(given[:, k].split(sizes, dim=1), like)]
            for k in range(given.shape[1])
        ]

    def _layers(self, depth: int, layers: Collection[int] | None) -> list[int]:
        return [l for l in self.inverse_layers(depth) if layers is None or l in layers]


class LDRL(DifferenceReconstruction):
    """DTP whose inverses minimise the local difference reconstruction loss (L-DRL) of Ernoult
    et al. 2022 (as computed by scalingDTP's `get_feedback_loss`). For layer l ≥ 2, with
    x = h_{l-1} (detached), y = f_l(x) (no grad), ε ~ N(0, σ²) shaped like x and η ~ N(0, σ²)
    shaped like y, per sample:

        ℓ_l = −2 εᵀ (g_l(f_l(x + ε)) − g_l(y)) + ‖g_l(y + η) − g_l(y)‖²

    To second order its expectation is σ² (‖J_g − J_fᵀ‖²_F − ‖J_f‖²_F), so g_l's Jacobian is
    driven to f_l's transpose and the DTP targets towards backprop's (their analysis). The
    loss is summed over the batch (theirs averages: equal to ours / batch size) and averaged
    over K = `drl_noise_samples` independent (ε, η) draws. Both g_l(y) terms carry gradient
    (as in their code). The top: ĥ_L = o − β ∂L/∂o (β = `beta`, their 0.7) and g_L, the
    output inverse, reading logits, trained by the same loss with y = o (their fc layer too).

    Choices where the sources are silent or differ from this design:
    - σ is one value for all layers (theirs is per layer, 0.4…0.08 on CIFAR-10); default 0.1.
    - By default inverses are trained once per batch, summed with the task loss in one
      backward (the parallel schedule) or every batch of an inverse epoch (alternating);
      theirs trains layer by layer for 20–55 SGD steps per batch before the forward step.
      `feedback_iterations` = K > 1 gives their order with all layers at once: K Adam steps
      of every g_l, then the forward step (`step_phases`).
    - No ½ and no 1/σ² on the loss: their form, so optim.inverse.lr absorbs σ² and the sum.
    - f_l(x) is recomputed under no_grad (one more forward per layer and step) rather than
      read from the graph, so the output layer (whose logits are not in `hs`) is not special.
    - The loss's differences of g are formed in float32 from g's values; under bf16 autocast
      those values are bf16, so an O(σ) difference keeps ~2 significant digits (the loss is
      a noisy estimate anyway). `inverse_difference` (float32 throughout) works in place and
      is for the signals, which carry no gradient; g_l(y) is evaluated once per layer."""

    name = "ldrl"
    noise_at_output = True

    def inverse_losses(
        self,
        net,
        hs: Activations,
        noise: dict[int, torch.Tensor] | None,
        layers: Collection[int] | None = None,
    ) -> dict[int, torch.Tensor]:
        losses = {}
        for l in self._layers(net.depth, layers):
            block, x = net.blocks[l - 1], hs[l - 1].detach()
            with torch.no_grad():
                y = block(x)
            total, draws = None, self._draws(l, (x, y), noise)
            r = _wide(block.inverse(y))  # g_l(y), shared by both terms and all K samples
            for eps, eta in draws:
                with torch.no_grad():
                    y_eps = block(x + eps)
                dr = _wide(block.inverse(y_eps)) - r  # g(f(x + ε)) − g(y)
                dr_y = _wide(block.inverse(y + eta)) - r  # g(y + η) − g(y)
                term = -2 * (_wide(eps) * dr).sum() + dr_y.pow(2).sum()
                total = term if total is None else total + term
            assert total is not None  # K >= 1
            losses[l] = total / len(draws)
        return losses


class DRL(DifferenceReconstruction):
    """DTP whose inverses minimise the difference reconstruction loss (DRL) of Meulemans et
    al. 2020 (their DTPDRL: `DTPDRLNetwork.compute_feedback_gradients`, the loss of
    `DTPDRLLayer`). For layer l ≥ 2, ε ~ N(0, σ²) at h_{l-1} is carried forward to the
    output, u_L = f_L∘…∘f_l(h_{l-1} + ε), and back by difference targets through the
    current inverses above (no grad), t_L = u_L, t_{k-1} = h_{k-1} + g_k(t_k) − g_k(h_k) for
    k = L…l+1; then, per sample,

        ℓ_l = (1/σ²) ‖ε − (g_l(t_l) − g_l(h_l))‖²

    i.e. (1/σ²)‖(h_{l-1} + ε) − (h_{l-1} + g_l(t_l) − g_l(h_l))‖², only g_l trained by ℓ_l.
    Minimised, the difference path from the output to h_{l-1} inverts the forward path
    (the Gauss–Newton targets of their theory). Summed over the batch (theirs: `mse_loss`,
    the mean over batch and units), averaged over K = `drl_noise_samples` draws.

    Choices: the top target is ĥ_L = o − β ∂L/∂o on the *logits* with g_L reading logits (as
    LDRL; Meulemans et al. put it on the softmax output and note in a FIXME that the linear
    output is likely better). Their MNIST DTPDRL run used σ ≈ 0.057; default here 0.1.

    Non-local: layer l's loss reads every block above l (forward and inverse), so it needs
    the whole net on one process — refused when a stage's `hs` lacks the activations
    above (the pipeline engine)."""

    name = "drl"

    def inverse_losses(
        self,
        net,
        hs: Activations,
        noise: dict[int, torch.Tensor] | None,
        layers: Collection[int] | None = None,
    ) -> dict[int, torch.Tensor]:
        todo = self._layers(net.depth, layers)
        if not todo:
            return {}
        depth = net.depth
        h = {}  # h_{l-1} … h_{L-1} detached, h_L = the logits (recomputed: not in hs)
        for k in range(min(todo) - 1, depth):
            try:
                h[k] = hs[k].detach()
            except (IndexError, KeyError):
                raise ValueError(
                    f"rule 'drl' needs h_{k} for layer {min(todo)}'s loss: its reconstruction runs through "
                    f"every layer above, so the whole net must be on one process (not the pipeline engine)"
                ) from None
        with torch.no_grad():
            h[depth] = net.blocks[depth - 1](h[depth - 1])
        losses = {}
        for l in todo:
            total, draws = None, self._draws(l, (h[l - 1],), noise)
            for [eps] in draws:
                with torch.no_grad():
                    u = h[l - 1] + eps
                    for k in range(l, depth + 1):
                        u = net.blocks[k - 1](u)
                    t = u  # t_L; then t_{k-1} = h_{k-1} − (g_k(h_k) − g_k(t_k))
                    for k in range(depth, l, -1):
                        t = h[k - 1] - net.blocks[k - 1].inverse_difference(h[k], h[k] - t).to(h[k - 1].dtype)
                # g_l(t_l) − g_l(h_l), with gradient to g_l only
                rec = _wide(net.blocks[l - 1].inverse(t)) - _wide(net.blocks[l - 1].inverse(h[l]))
                term = (_wide(eps) - rec).pow(2).sum() / self.sigma**2
                total = term if total is None else total + term
            assert total is not None
            losses[l] = total / len(draws)
        return losses
