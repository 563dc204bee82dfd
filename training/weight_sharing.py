"""`model.weight_sharing=instant`: every `model.weight_sharing_every_steps` optimizer steps,
each locally-connected layer's weights are replaced by their average over positions
(`LocallyConnected2d.share_weights_`, after Pogodin et al. 2021's sleep-phase weight
sharing, done exactly instead of through lateral Hebbian dynamics). `dynamic`: the same
events run `model.weight_sharing_iterations` anti-Hebbian steps of rate
`model.weight_sharing_rate` on shared random inputs instead (`hebbian_share_`), which pull
the positions towards their mean without reaching it; the inputs come from a generator
seeded by (seed, step), so every rank draws the same ones and a resumed run the same again.
Training starts from tied weights (`tie_weights`: position 0's filter everywhere, the conv
twin's init scale); the positions then drift apart between sharing events.

Which layers: every LC layer of the net — the forward layers f_l and, for target
propagation, the transposed LC layers of the inverses g_l (so an LC net's inverses move
towards the transposed-convolution inverses of its conv twin along with the forward
layers). A KP layer's trained feedback B_l (a parameter of the layer) is averaged with its
W_l; FA's fixed random feedback buffers are left alone (they are not trained), and
sign-symmetry's B = s·sign(W) follows W by construction. Adam's moments are not touched:
they stay per position.

Engines: the plain, DDP and pipeline engines hold full (replicated or per-stage) weights,
changed in place on every rank alike. DeepSpeed keeps its own fp32 master copy of the
weights in the optimizer (ZeRO 1-3, and bf16 at stage 0), which the next step would copy
back over the module's weights: the averaged values are written there too
(`deepspeed.utils.safe_set_full_fp32_param`). Under ZeRO-3 the module's weights are
partitioned: each layer's are gathered (`deepspeed.zero.GatheredParameters`, modifier rank
0, whose result is re-partitioned on exit). With bf16 weights the average is formed in
float32 from the bf16 module weights and rounded to bf16; the master copy then receives
those rounded values (not the average of its own float32 values)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from bioscale.models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

LCLayer = LocallyConnected2d | LocallyConnectedTranspose2d


def lc_layers(module: nn.Module) -> list[LCLayer]:
    """Every LC layer (forward or transposed) inside `module`, in module order."""
    return [m for m in module.modules() if isinstance(m, (LocallyConnected2d, LocallyConnectedTranspose2d))]


def tie_weights(module: nn.Module) -> int:
    """Give every LC layer one filter at all positions (position 0's) before training
    starts — before a DeepSpeed engine partitions the weights — so that the sharing events
    average filters that start equal (`LocallyConnected2d.tie_weights_`). Returns the
    number of layers."""
    layers = lc_layers(module)
    for layer in layers:
        layer.tie_weights_()
    return len(layers)


def dynamic_sharing(rate: float, iterations: int, seed: int, step: int) -> Callable[[LCLayer], None]:
    """The `share` of `share_weights` for model.weight_sharing=dynamic at optimizer step `step`."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return lambda layer: layer.hebbian_share_(rate, iterations, generator)


def share_weights(
    module: nn.Module, deepspeed_stage: int | None = None, share: Callable[[LCLayer], None] | None = None
) -> int:
    """Share every LC layer's weights over positions: `share(layer)`, by default the exact
    average (`share_weights_`; see the module docstring). Returns the number of layers
    shared. `deepspeed_stage`: the ZeRO stage when the weights belong to a DeepSpeed engine
    (every rank must call this then), None otherwise."""
    share = share or (lambda layer: layer.share_weights_())
    layers = lc_layers(module)
    for layer in layers:
        params = list(layer.parameters(recurse=False))
        if deepspeed_stage is None:
            share(layer)
            continue
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        gather = (
            deepspeed.zero.GatheredParameters(params, modifier_rank=0)
            if deepspeed_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            share(layer)  # every rank computes the same result from the same full weights (and inputs)
            values = [p.detach().clone() for p in params]
        for p, value in zip(params, values):
            safe_set_full_fp32_param(p, value)  # the optimizer's master copy (no-op without one)
    return len(layers)
