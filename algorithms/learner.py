"""`Learner`: a network plus a learning rule, as one `nn.Module` whose forward returns the
loss to backpropagate. One training step, for every rule and under DeepSpeed too:

    out = learner(x, y, phase=rule.phase_for_epoch(epoch), grad_scale=c)
    (c * out.loss).backward()     # or engine.backward(out.loss) with c = 1/GAS
    opt_forward.step(); opt_inverse.step()

The algorithm owns the update; loops, logging and checkpoints live in `training/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bioscale.algorithms.config import RuleConfig
from bioscale.algorithms.feedback import FeedbackTrace, TraceGap
from bioscale.algorithms.registry import build_rule
from bioscale.algorithms.rules import PHASES, Rule
from bioscale.models import Network, build_network


@dataclass
class StepOutput:
    loss: torch.Tensor
    """Unscaled loss to backpropagate: task loss (summed cross-entropy) and/or Σ inverse losses."""
    logits: torch.Tensor
    """Detached logits of the batch (for accuracy)."""
    task_loss: torch.Tensor
    """Detached cross-entropy summed over the batch."""
    inverse_losses: dict[int, torch.Tensor] = field(default_factory=dict)
    """Detached Σ_batch ½‖·‖² inverse loss per layer l (1-based)."""
    trace: FeedbackTrace | None = None
    """After backward: `trace.local_losses[l]` = Σ_batch ½‖δ_l‖² per hidden layer."""
    hidden: list[torch.Tensor] = field(default_factory=list)
    """h_1 .. h_{L-1} as they sit in the graph (call `.retain_grad()` to see c·δ_l after backward)."""


class Learner(nn.Module):
    def __init__(self, net: Network, rule: Rule, feedback_seed: int = 0):
        super().__init__()
        self.net, self.rule = net, rule
        if rule.target_propagation:
            missing = [l for l in rule.inverse_layers(net.depth) if not net.blocks[l - 1].has_inverse]
            if missing:
                raise ValueError(
                    f"rule {rule.name!r} needs inverses g_l for layers {missing}; "
                    f"build the network with with_inverses=True"
                )
        if rule.aux_dim and net.output_block.aux_dim != rule.aux_dim:
            raise ValueError(f"rule {rule.name!r} needs an output block with aux_dim={rule.aux_dim}")
        generator = torch.Generator().manual_seed(feedback_seed)
        for name, tensor in rule.init_feedback(net, generator).items():
            self.register_buffer(name, tensor.to(net.output_block.layer.weight.device))
        rule.attach_feedback(net, generator)  # trained feedback (KP): parameters of the layers

    @property
    def feedback(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers(recurse=False))

    def forward_parameters(self) -> list[nn.Parameter]:
        return self.net.forward_parameters()

    def inverse_parameters(self) -> list[nn.Parameter]:
        used = {l for l in self.rule.inverse_layers(self.net.depth)}
        params: list[nn.Parameter] = []
        for l in range(1, self.net.depth + 1):
            if l in used:
                inverse_layer = self.net.block(l).inverse_layer
                assert inverse_layer is not None  # __init__ checks every used layer has an inverse
                params.extend(inverse_layer.parameters())
        return params

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        phase: str = "both",
        grad_scale: float = 1.0,
        noise: dict[int, torch.Tensor] | None = None,
    ) -> StepOutput:
        """phase: 'both' (task + inverse losses), 'forward' (task loss only) or 'inverse'
        (inverse losses only; the forward pass then runs without a graph). `grad_scale` is c,
        the factor the caller applies to `loss` before backward. `noise[l]`: the ε added to
        h_{l-1} for layer l's inverse loss (tests pass a shared draw; its per-sample shape is
        `rule.noise_shape(net, l)`: the difference reconstruction rules take more)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if phase != "both" and not self.rule.target_propagation:
            raise ValueError(f"rule {self.rule.name!r} has no inverse weights: only phase 'both' applies")
        self.net.check_input(x)
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        trace = FeedbackTrace(grad_scale)
        with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "inverse"):
            hs, logits = self._propagate(x, y, trace)
        task_loss = F.cross_entropy(logits, y, reduction="sum")
        inverse = self.rule.inverse_losses(self.net, hs, noise) if phase != "forward" else {}
        loss: torch.Tensor
        if phase == "inverse":
            inverse_total = sum(inverse.values())
            # sum() of no losses is the int 0, which has nothing to backpropagate
            assert isinstance(inverse_total, torch.Tensor), f"rule {self.rule.name!r} trains no inverse layers"
            loss = inverse_total
        else:
            loss = task_loss + sum(inverse.values()) if inverse else task_loss
        return StepOutput(
            loss=loss,
            logits=logits.detach(),
            task_loss=task_loss.detach(),
            inverse_losses={l: v.detach() for l, v in inverse.items()},
            trace=trace,
            hidden=hs[1:],
        )

    def _propagate(self, x, y, trace):
        feedback, blocks = self.feedback, self.net.blocks
        hs, h = [x], x
        for l, block in enumerate(blocks[:-1], 1):
            h = self.rule.hidden(l, block, h, trace, feedback)
            if h.requires_grad:
                h = TraceGap.apply(h, l, trace)
            hs.append(h)
        logits = self.rule.top(len(blocks), blocks[-1], h, y, trace, feedback)
        return hs, logits


def build_learner(
    arch: str,
    cfg: RuleConfig,
    *,
    seed: int = 0,
    device=None,
    dtype: torch.dtype | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> Learner:
    """Build the network `arch` with exactly what `cfg.rule` needs (inverses, auxiliary output)."""
    rule = build_rule(cfg)
    torch.manual_seed(seed)
    net = build_network(
        arch,
        with_inverses=rule.target_propagation,
        output_inverse=rule.uses_output_inverse,
        aux_dim=rule.aux_dim,
        aux_seed=cfg.feedback_seed,
        device=device,
        dtype=dtype,
        input_shape=input_shape,
        num_classes=num_classes,
    )
    return Learner(net, rule, feedback_seed=cfg.feedback_seed)
