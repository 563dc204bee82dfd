"""How far is a rule's update from backprop's? Per-layer update directions and angles.

The update direction of layer l is the gradient the rule gives θ_l = (W_l, b_l) on a
batch; the BP direction is the true gradient of the summed cross-entropy on the same
batch and the same weights. Neither touches `.grad` (autograd.grad), so this can run
between training steps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bioscale.algorithms.learner import Learner


def _per_layer(net, grads) -> dict[int, torch.Tensor]:
    out, i = {}, 0
    for l, block in enumerate(net.blocks, 1):
        n = len(list(block.layer.parameters()))
        out[l] = torch.cat([g.reshape(-1) for g in grads[i : i + n]])
        i += n
    return out


def update_directions(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """The rule's gradient for each layer's forward parameters, flattened (layer l → vector)."""
    phase = "forward" if learner.rule.target_propagation else "both"
    params = learner.forward_parameters()
    with torch.enable_grad():
        out = learner(x, y, phase=phase)
        grads = torch.autograd.grad(out.loss, params)
    return _per_layer(learner.net, grads)


def bp_directions(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    params = learner.forward_parameters()
    with torch.enable_grad():
        loss = F.cross_entropy(learner.net(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, params)
    return _per_layer(learner.net, grads)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm().item(), b.norm().item()
    if na == 0 or nb == 0:
        return math.nan
    cos = (a @ b).item() / (na * nb)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def angles_to_bp(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """Angle in degrees between the rule's update and BP's gradient, per layer l (1-based)."""
    rule, bp = update_directions(learner, x, y), bp_directions(learner, x, y)
    return {l: angle_deg(rule[l], bp[l]) for l in rule}
