"""A plain, loop-by-loop implementation of the paper's Algorithm 1 (SDTP) and of DTP, BP,
FA, DFA and AO-SDTP for fully-connected tanh nets, with explicit hand-written gradients
and one SGD step. Written independently of `algorithms/` (no autograd, no boundaries):
it is the oracle the autograd implementation must match. Keep it boring.

Weights: W[l], b[l] for l = 1..L (l = L is the linear softmax layer), V[l], c[l] for
the inverse g_l(u) = tanh(u Vᵀ + c), l = 2..L (l = L only for SDTP/AO-SDTP).
"""

from __future__ import annotations

import torch


def tanh_layer(h, W, b):
    return torch.tanh(h @ W.T + b)


def softmax(z):
    z = z - z.max(dim=1, keepdim=True).values
    e = torch.exp(z)
    return e / e.sum(dim=1, keepdim=True)


def oracle_step(
    params,
    x,
    y,
    rule,
    lr,
    phase="both",
    alpha=0.1,
    inverse_loss="denoising",
    noise=None,
    feedback=None,
    aux_projection=None,
):
    """Return (new_params, info) after one SGD step. info holds targets ĥ_l and gaps h_l − ĥ_l."""
    W, b = params["W"], params["b"]
    V, c = params.get("V", {}), params.get("c", {})
    L = len(W)
    N = x.shape[0]
    classes = W[L].shape[0]

    # ---- forward ----
    h = {0: x}
    for l in range(1, L):
        h[l] = tanh_layer(h[l - 1], W[l], b[l])
    logits = h[L - 1] @ W[L].T + b[L]
    p = softmax(logits)
    onehot = torch.zeros(N, classes, dtype=x.dtype)
    for n in range(N):
        onehot[n, y[n]] = 1.0
    e = p - onehot  # d(summed cross-entropy)/d(logits)

    def g(l, u):
        return torch.tanh(u @ V[l].T + c[l])

    def z_of(hh):
        return hh @ aux_projection.T

    # ---- targets / error signals at each hidden layer: delta[l] = h_l − ĥ_l ----
    delta = {}
    if rule == "bp":
        delta[L - 1] = e @ W[L]
        for l in range(L - 1, 1, -1):
            d = delta[l] * (1 - h[l] ** 2)
            delta[l - 1] = d @ W[l]
    elif rule == "fa":
        delta[L - 1] = e @ feedback[L]
        for l in range(L - 1, 1, -1):
            d = delta[l] * (1 - h[l] ** 2)
            delta[l - 1] = d @ feedback[l]
    elif rule == "dfa":
        for l in range(1, L):
            delta[l] = e @ feedback[l]
    else:
        target = {}
        if rule == "dtp":
            target[L - 1] = h[L - 1] - alpha * (e @ W[L])
        elif rule == "sdtp":
            target[L - 1] = h[L - 1] - g(L, p) + g(L, onehot)
        elif rule == "aosdtp":
            z = z_of(h[L - 1])
            target[L - 1] = h[L - 1] - g(L, torch.cat([p, z], 1)) + g(L, torch.cat([onehot, z], 1))
        else:
            raise ValueError(rule)
        for l in range(L - 1, 1, -1):
            target[l - 1] = h[l - 1] - g(l, h[l]) + g(l, target[l])
        for l in range(1, L):
            delta[l] = h[l] - target[l]

    new = {k: {l: t.clone() for l, t in v.items()} for k, v in params.items()}

    # ---- forward weights ----
    if phase in ("both", "forward"):
        new["W"][L] = W[L] - lr * (e.T @ h[L - 1])
        new["b"][L] = b[L] - lr * e.sum(0)
        for l in range(1, L):
            d = delta[l] * (1 - h[l] ** 2)
            new["W"][l] = W[l] - lr * (d.T @ h[l - 1])
            new["b"][l] = b[l] - lr * d.sum(0)

    # ---- inverse weights ----
    inv_layers = []
    if rule in ("dtp", "sdtp", "aosdtp") and phase in ("both", "inverse"):
        inv_layers = list(range(2, L)) + ([L] if rule != "dtp" else [])
    inv_loss = {}
    for l in inv_layers:
        h_noisy = h[l - 1] + noise[l]
        if l == L:
            f_out = softmax(h_noisy @ W[L].T + b[L])
            if rule == "aosdtp":
                f_out = torch.cat([f_out, z_of(h_noisy)], 1)
        else:
            f_out = tanh_layer(h_noisy, W[l], b[l])
        r = g(l, f_out)
        tgt = h[l - 1] if inverse_loss == "denoising" else h_noisy
        inv_loss[l] = 0.5 * ((r - tgt) ** 2).sum()
        d = (r - tgt) * (1 - r**2)
        new["V"][l] = V[l] - lr * (d.T @ f_out)
        new["c"][l] = c[l] - lr * d.sum(0)

    return new, {"h": h, "delta": delta, "inverse_loss": inv_loss}
