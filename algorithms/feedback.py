"""What crosses a block boundary in the backward pass — the whole difference between rules.

Every rule keeps each block's parameter gradient purely local: a boundary is a
`torch.autograd.Function` with two inputs, `a_l = f_l(h_{l-1}.detach())` and
`h_{l-1}`, returning h_l (= a_l). Its backward passes `grad_output` unchanged to
`a_l` (θ_l gets the gradient of its local loss) and the rule's signal to `h_{l-1}`.
A one-input Function at the block input would see J_lᵀδ_l, not δ_l.

Conventions (tests rely on them):
- δ_l = h_l − ĥ_l per sample; grad_output = c·δ_l is the gradient of
  c·Σ_batch ½‖f_l(h_{l-1}) − ĥ_l‖² — summed over the batch, never averaged,
  because δ is fed nonlinearly into g.
- c (`FeedbackTrace.scale`) is whatever multiplies the loss before backward:
  1 normally, 1/GAS under gradient accumulation, the loss scale under fp16.
  Every boundary reads δ_l = grad_output / c and returns c·δ_{l-1}; without
  this, accumulation would silently change target-propagation updates.
- `h_{l-1}` must feed nothing else that carries a gradient (inverse losses use
  `.detach()`), or autograd would add into the signal.
"""

from __future__ import annotations

import torch

from bioscale.models.amp import autocast_backward, autocast_forward


class FeedbackTrace:
    """Per-step side channel shared by the boundaries of one forward/backward pass."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"grad scale c must be positive, got {scale}")
        self.scale = float(scale)
        self.output_error: torch.Tensor | None = None  # c·e = c·(p − onehot), set by DFA's top boundary
        self.local_losses: dict[int, torch.Tensor] = {}  # l → Σ_batch ½‖δ_l‖², filled during backward


class TraceGap(torch.autograd.Function):
    """Identity on h_l; in backward records the local loss ½‖δ_l‖² of layer l."""

    @staticmethod
    @autocast_forward
    def forward(ctx, h, layer, trace):
        ctx.layer, ctx.trace = layer, trace
        return h.view_as(h)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        scale = ctx.trace.scale
        delta = grad.detach() if scale == 1.0 else grad.detach() / scale
        ctx.trace.local_losses[ctx.layer] = 0.5 * torch.linalg.vector_norm(delta).square()  # one pass, no temporary
        return grad, None, None


class DifferenceTarget(torch.autograd.Function):
    """DTP/SDTP below the top: δ_{l-1} = g_l(h_l) − g_l(h_l − δ_l),
    i.e. ĥ_{l-1} = h_{l-1} − g_l(h_l) + g_l(ĥ_l). g_l is called as a module (never
    its parameters directly: under ZeRO-3 they are empty outside a module call), through
    `inverse_difference`, which keeps the difference in float32 under bf16 autocast."""

    @staticmethod
    @autocast_forward
    def forward(ctx, a, h_prev, block, trace):
        ctx.save_for_backward(a)
        ctx.block, ctx.trace = block, trace
        return a.view_as(a)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        c = ctx.trace.scale
        with torch.no_grad():
            # g(h) − g(h − δ), δ = grad / c, formed without cancellation (bf16: blocks.py);
            # c = 1 (the usual case) skips two passes over δ and the signal
            signal = ctx.block.inverse_difference(h, grad if c == 1.0 else grad / c)
            if c != 1.0:
                signal.mul_(c)
        return grad, signal, None, None


class FixedTopSignal(torch.autograd.Function):
    """SDTP / AO-SDTP top: δ_{L-1} was computed in the forward from g_L and the label;
    the incoming gradient is ignored for the signal (it still trains the output layer)."""

    @staticmethod
    @autocast_forward
    def forward(ctx, logits, h_prev, delta, trace):
        ctx.delta, ctx.trace = delta, trace
        return logits.view_as(logits)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        return grad, ctx.trace.scale * ctx.delta, None, None


class ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient × α backward (DTP's penultimate target h − α ∂L/∂h)."""

    @staticmethod
    @autocast_forward
    def forward(ctx, h, alpha):
        ctx.alpha = alpha
        return h.view_as(h)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        return grad * ctx.alpha, None


class DirectFeedback(torch.autograd.Function):
    """DFA: every hidden layer receives B_l·e from the output error e, not from the layer above.
    The top boundary stores c·e (its incoming gradient w.r.t. the logits of the summed
    cross-entropy) in the trace; lower boundaries read it (autograd runs them later)."""

    @staticmethod
    @autocast_forward
    def forward(ctx, a, h_prev, feedback, trace, is_top):
        ctx.save_for_backward(feedback)
        ctx.trace, ctx.is_top, ctx.prev_shape = trace, is_top, h_prev.shape
        # LC activations are NCHW views of (H, W, C, N) memory: the signal is built in that
        # layout, so that the layer's tanh backward and LC kernels below read it without a
        # transposing walk (4.4 vs 1.0 ms for one 128×32×14×14 tanh backward here).
        ctx.batch_innermost = h_prev.dim() == 4 and h_prev.permute(2, 3, 1, 0).is_contiguous()
        return a.view_as(a)

    @staticmethod
    @autocast_backward
    def backward(ctx, grad):
        (feedback,) = ctx.saved_tensors
        if ctx.is_top:
            ctx.trace.output_error = grad.detach()
        e = ctx.trace.output_error
        if ctx.batch_innermost:
            n, c, h, w = ctx.prev_shape
            fb_hwc = feedback.view(-1, c, h, w).permute(2, 3, 1, 0).reshape(h * w * c, -1)
            signal = (fb_hwc @ e.t()).view(h, w, c, n).permute(3, 2, 0, 1)
        else:
            signal = (e @ feedback).reshape(ctx.prev_shape)
        return grad, signal, None, None, None
