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


def _layer_params(net) -> list[list[torch.Tensor]]:
    """θ_l = (W_l, b_l) per layer: the weight and bias only (a KP layer's trained feedback
    B_l is also one of its parameters, but not part of the forward function)."""
    return [[p for p in (block.layer.weight, block.layer.bias) if p is not None] for block in net.blocks]


def _per_layer(net, grads) -> dict[int, torch.Tensor]:
    out, i = {}, 0
    for l, params in enumerate(_layer_params(net), 1):
        n = len(params)
        out[l] = torch.cat([g.reshape(-1) for g in grads[i : i + n]])
        i += n
    return out


def update_directions(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """The rule's gradient for each layer's forward parameters, flattened (layer l → vector)."""
    phase = "forward" if learner.rule.target_propagation else "both"
    params = [p for ps in _layer_params(learner.net) for p in ps]
    with torch.enable_grad():
        out = learner(x, y, phase=phase)
        grads = torch.autograd.grad(out.loss, params)
    return _per_layer(learner.net, grads)


def bp_directions(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    params = [p for ps in _layer_params(learner.net) for p in ps]
    with torch.enable_grad():
        loss = F.cross_entropy(learner.net(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, params)
    return _per_layer(learner.net, grads)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    # in float64: under bf16 autocast a float32 dot product would run as a bf16 matmul
    # (measured: BP's angle to itself then reads 2.4°)
    a, b = a.double(), b.double()
    na, nb = a.norm().item(), b.norm().item()
    if na == 0 or nb == 0:
        return math.nan
    cos = (a @ b).item() / (na * nb)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def angles_to_bp(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """Angle in degrees between the rule's update and BP's gradient, per layer l (1-based)."""
    rule, bp = update_directions(learner, x, y), bp_directions(learner, x, y)
    return {l: angle_deg(rule[l], bp[l]) for l in rule}


def feedback_angles(learner: Learner) -> dict[int, float]:
    """Angle in degrees between each layer's trained feedback B_l and its forward weight W_l
    (both flattened; layer l → angle), for rules whose feedback is a parameter of the layer
    (KP: `layer.feedback_weight`). Empty for the other rules. Reads W and B outside any
    module call: not under ZeRO-3 (the trainer skips angle steps there)."""
    out = {}
    with torch.no_grad():
        for l in range(1, learner.net.depth + 1):
            layer = learner.net.block(l).layer
            b = getattr(layer, "feedback_weight", None)
            if isinstance(b, torch.nn.Parameter):
                w = layer.get_parameter("weight")
                out[l] = angle_deg(b.detach().reshape(-1).double(), w.detach().reshape(-1).double())
    return out


def boundary_signals(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """The signal c·δ_l arriving at each hidden h_l from the task loss (layer l → tensor),
    under the caller's autocast state; touches no `.grad`."""
    with torch.enable_grad():
        out = learner(x, y, phase="forward" if learner.rule.target_propagation else "both")
        layers = [(l, h) for l, h in enumerate(out.hidden, 1) if h.requires_grad]
        grads = torch.autograd.grad(out.loss, [h for _, h in layers], allow_unused=True)
    return {l: g.detach() for (l, _), g in zip(layers, grads) if g is not None}


def signal_cosines(learner: Learner, x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype) -> dict[int, float]:
    """Per hidden layer, the cosine between the boundary signal under `autocast_dtype`
    autocast and the one in the weights' own dtype (same weights, same batch): how much of
    the rule's signal survives reduced precision (`bioscale doctor` checks it for bf16)."""
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=False):
        ref = boundary_signals(learner, x, y)
    with torch.autocast(x.device.type, dtype=autocast_dtype):
        low = boundary_signals(learner, x, y)
    out = {}
    for l, r in ref.items():
        a, b = low[l].double().flatten(), r.double().flatten()
        denom = a.norm() * b.norm()
        out[l] = float((a @ b) / denom) if denom > 0 else math.nan
    return out
