"""A plain, loop-by-loop oracle for DTP with difference-reconstruction-trained inverses:
L-DRL (Ernoult et al. 2022) and DRL (Meulemans et al. 2020), one SGD step, on tanh nets whose
hidden layers are fully connected ("fc") or locally connected ("lc", position by position,
`oracle_alignment.LC`), with a linear softmax output layer. Hand-written gradients, no
autograd; written from the papers' equations, independently of `algorithms/`. Keep it boring.

Weights: W[l], b[l] (l = 1..L, L the output layer); inverses g_l, l = 2..L:
    hidden:  g_l(u) = tanh(u V[l]ᵀ + c[l])  (fc)   or  tanh(LCᵀ_V[l](u) + c[l])  (lc)
    output:  g_L(o) = tanh(o V[L]ᵀ + c[L]) on the logits o, reshaped to h_{L-1}'s shape
LCᵀ_V is the adjoint of the LC map with weights V (`LC.input_grad(u, V)`).

Targets:  ĥ_L = o − β (p − onehot),  ĥ_{l-1} = h_{l-1} − g_l(h_l) + g_l(ĥ_l)  (h_L = o).
Per-sample inverse losses, averaged over the K noise samples, summed over the batch:
    ldrl:  −2 εᵀ (g_l(f_l(h_{l-1} + ε)) − g_l(h_l)) + ‖g_l(h_l + η) − g_l(h_l)‖²
    drl:   ‖ε − (g_l(t_l) − g_l(h_l))‖² / σ²,  t_L = f_L∘…∘f_l(h_{l-1} + ε),
           t_{m-1} = h_{m-1} − g_m(h_m) + g_m(t_m) for m = L … l+1.
"""

from __future__ import annotations

import torch

from tests.algorithms.oracle_alignment import softmax


class Net:
    def __init__(self, params, layers):
        self.W, self.b = params["W"], params["b"]
        self.V, self.c = params["V"], params["c"]
        self.layers, self.L = layers, len(params["W"])

    def f(self, l, h):
        """f_l: tanh of the dense / LC layer below the top; the logits at l = L."""
        if l == self.L:
            return h.reshape(h.shape[0], -1) @ self.W[l].T + self.b[l]
        if self.layers[l] is None:
            return torch.tanh(h @ self.W[l].T + self.b[l])
        return torch.tanh(self.layers[l].forward(h, self.W[l], self.b[l]))

    def g(self, l, u, shape):
        """g_l(u), shaped like h_{l-1} (`shape`)."""
        if l == self.L or self.layers[l] is None:
            return torch.tanh(u @ self.V[l].T + self.c[l]).reshape(shape)
        return torch.tanh(self.layers[l].input_grad(u, self.V[l]) + self.c[l])

    def g_grads(self, l, u, z, G):
        """(∂/∂V, ∂/∂c) of Σ G·z for z = g_l(u)."""
        D = G * (1 - z**2)
        if l == self.L or self.layers[l] is None:
            D = D.reshape(D.shape[0], -1)
            return D.T @ u, D.sum(0)
        gV, _ = self.layers[l].weight_grad(D, u)  # the adjoint's weight gradient: input D, output u
        return gV, D.sum(0)


def drl_step(params, layers, x, y, rule, lr, beta, sigma, noise, phase="both"):
    """One SGD step of `rule` ('ldrl' | 'drl'). `layers[l]`: None (dense) or an `LC` for the
    hidden layers. noise[l] = (ε,) or (ε, η), each stacked over the K samples.
    Returns (new_params, info) with info["delta"][l] = h_l − ĥ_l, info["inverse_loss"][l]."""
    net, L, N = Net(params, layers), len(params["W"]), x.shape[0]
    h = {0: x}
    for l in range(1, L + 1):
        h[l] = net.f(l, h[l - 1])  # h[L] = the logits o
    p = softmax(h[L])
    onehot = torch.zeros_like(p)
    for n in range(N):
        onehot[n, y[n]] = 1.0
    e = p - onehot

    target = {L: h[L] - beta * e}
    for l in range(L, 1, -1):
        target[l - 1] = h[l - 1] - net.g(l, h[l], h[l - 1].shape) + net.g(l, target[l], h[l - 1].shape)
    delta = {l: h[l] - target[l] for l in range(1, L)}

    new = {k: {l: t.clone() for l, t in v.items()} for k, v in params.items()}
    if phase in ("both", "forward"):
        new["W"][L] = params["W"][L] - lr * (e.T @ h[L - 1].reshape(N, -1))
        new["b"][L] = params["b"][L] - lr * e.sum(0)
        for l in range(1, L):
            d = delta[l] * (1 - h[l] ** 2)
            if layers[l] is None:
                gW, gb = d.T @ h[l - 1], d.sum(0)
            else:
                gW, gb = layers[l].weight_grad(h[l - 1], d)
            new["W"][l] = params["W"][l] - lr * gW
            new["b"][l] = params["b"][l] - lr * gb

    inv_loss = {}
    for l in range(2, L + 1) if phase in ("both", "inverse") else ():
        shape = h[l - 1].shape
        K = noise[l][0].shape[0]
        total = torch.zeros((), dtype=x.dtype)
        terms = []  # (u, z = g_l(u), ∂loss/∂z) of every evaluation of g_l
        r = net.g(l, h[l], shape)
        for k in range(K):
            eps = noise[l][0][k]
            if rule == "ldrl":
                eta = noise[l][1][k]
                y_eps = net.f(l, h[l - 1] + eps)
                z1, z2 = net.g(l, y_eps, shape), net.g(l, h[l] + eta, shape)
                total = total + (-2 * (eps * (z1 - r)).sum() + ((z2 - r) ** 2).sum())
                terms.append((y_eps, z1, -2 * eps))
                terms.append((h[l] + eta, z2, 2 * (z2 - r)))
                terms.append((h[l], r, 2 * eps - 2 * (z2 - r)))
            else:
                u = h[l - 1] + eps
                for m in range(l, L + 1):
                    u = net.f(m, u)
                t = u
                for m in range(L, l, -1):
                    t = h[m - 1] - net.g(m, h[m], h[m - 1].shape) + net.g(m, t, h[m - 1].shape)
                z1 = net.g(l, t, shape)
                res = eps - (z1 - r)
                total = total + (res**2).sum() / sigma**2
                terms.append((t, z1, -2 * res / sigma**2))
                terms.append((h[l], r, 2 * res / sigma**2))
        inv_loss[l] = total / K
        grads = [net.g_grads(l, u, z, G / K) for u, z, G in terms]
        new["V"][l] = params["V"][l] - lr * sum(gV for gV, _ in grads)
        new["c"][l] = params["c"][l] - lr * sum(gc for _, gc in grads)
    return new, {"delta": delta, "inverse_loss": inv_loss}
