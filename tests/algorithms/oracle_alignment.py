"""A plain, loop-by-loop oracle for the FA variants added after the paper: sign-symmetry
(Liao et al. 2016 / Xiao et al. 2018) and Kolen–Pollack (Akrout et al. 2019, §4), on tanh
nets whose hidden layers are fully connected ("fc") or locally connected ("lc", written
out position by position), with a linear softmax output layer, and one SGD step.
Written from the papers' equations, independently of `algorithms/` and `models/` (no
autograd, no unfold, no boundaries). Keep it boring.

Per layer l (1-based, L = output): forward weight W[l], bias b[l]; KP's feedback B[l] for
l ≥ 2. With d_l the error at layer l's pre-activation and δ_{l-1} what crosses down:

    d_L = p − onehot(y)                          (summed cross-entropy)
    δ_{l-1} = Bᵀ-product of d_l with F_l        (F_l = s_l·sign(W_l) or B_l)
    d_l = δ_l ⊙ (1 − h_l²)
    W_l ← W_l − η (d_l ⊗ h_{l-1} + λ W_l)        λ only for KP and l ≥ 2
    B_l ← B_l − η (d_l ⊗ h_{l-1} + λ B_l)        KP only
    b_l ← b_l − η Σ_n d_l

An "lc" layer is y[n,o,i,j] = Σ_{a,b,c} W[i·Wo+j, o, (a,b,c)] xpad[n,c,i·s+a,j·s+b] + b[o,i,j],
SAME padding as TensorFlow: out = ceil(in/s), total = max((out−1)s + k − in, 0), the
extra pixel at the bottom/right.
"""

from __future__ import annotations

import math

import torch


def same_padding(n: int, k: int, s: int) -> tuple[int, int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2, out


def valid_padding(n: int, k: int, s: int) -> tuple[int, int, int]:
    return 0, 0, (n - k) // s + 1


class LC:
    """Geometry of one locally-connected layer, with its forward, weight gradient and
    input gradient (through any weight-shaped matrix M) written as loops over positions."""

    def __init__(self, in_shape, channels, k, s, padding):
        self.c, self.h, self.w = in_shape
        self.o, self.k, self.s = channels, k, s
        rule = same_padding if padding == "same" else valid_padding
        self.pt, self.pb, self.ho = rule(self.h, k, s)
        self.pl, self.pr, self.wo = rule(self.w, k, s)

    def padded(self, x):
        n = x.shape[0]
        xp = torch.zeros(n, self.c, self.h + self.pt + self.pb, self.w + self.pl + self.pr, dtype=x.dtype)
        xp[:, :, self.pt : self.pt + self.h, self.pl : self.pl + self.w] = x
        return xp

    def patch(self, xp, i, j):
        """(N, K) with K ordered (kh, kw, C)."""
        p = xp[:, :, i * self.s : i * self.s + self.k, j * self.s : j * self.s + self.k]
        return p.permute(0, 2, 3, 1).reshape(xp.shape[0], -1)

    def forward(self, x, W, b):
        xp = self.padded(x)
        y = torch.zeros(x.shape[0], self.o, self.ho, self.wo, dtype=x.dtype)
        for i in range(self.ho):
            for j in range(self.wo):
                y[:, :, i, j] = self.patch(xp, i, j) @ W[i * self.wo + j].T + b[:, i, j]
        return y

    def weight_grad(self, x, d):
        xp = self.padded(x)
        gW = torch.zeros(self.ho * self.wo, self.o, self.k * self.k * self.c, dtype=x.dtype)
        for i in range(self.ho):
            for j in range(self.wo):
                gW[i * self.wo + j] = d[:, :, i, j].T @ self.patch(xp, i, j)
        return gW, d.sum(0)

    def input_grad(self, d, M):
        n = d.shape[0]
        gp = torch.zeros(n, self.c, self.h + self.pt + self.pb, self.w + self.pl + self.pr, dtype=d.dtype)
        for i in range(self.ho):
            for j in range(self.wo):
                g = (d[:, :, i, j] @ M[i * self.wo + j]).reshape(n, self.k, self.k, self.c).permute(0, 3, 1, 2)
                gp[:, :, i * self.s : i * self.s + self.k, j * self.s : j * self.s + self.k] += g
        return gp[:, :, self.pt : self.pt + self.h, self.pl : self.pl + self.w]

    def fans(self):
        return self.c * self.k * self.k, self.o * self.k * self.k


def softmax(z):
    z = z - z.max(dim=1, keepdim=True).values
    e = torch.exp(z)
    return e / e.sum(dim=1, keepdim=True)


def alignment_step(params, layers, x, y, rule, lr, decay=0.0):
    """One SGD step of `rule` ('signsym' | 'kp'). `layers[l]` is None for a dense layer
    (the output layer is always dense) or an `LC` geometry. Returns (new_params, deltas)."""
    W, b, B = params["W"], params["b"], params.get("B", {})
    L = len(W)
    N = x.shape[0]
    h = {0: x}
    for l in range(1, L):
        a = h[l - 1] @ W[l].T + b[l] if layers[l] is None else layers[l].forward(h[l - 1], W[l], b[l])
        h[l] = torch.tanh(a)
    flat = h[L - 1].reshape(N, -1)
    p = softmax(flat @ W[L].T + b[L])
    onehot = torch.zeros_like(p)
    for n in range(N):
        onehot[n, y[n]] = 1.0

    def feedback(l):
        if rule == "kp":
            return B[l]
        if layers[l] is None:
            fan_in, fan_out = W[l].shape[1], W[l].shape[0]
        else:
            fan_in, fan_out = layers[l].fans()
        return math.sqrt(2.0 / (fan_in + fan_out)) * torch.sign(W[l])

    d = {L: p - onehot}
    delta = {L - 1: (d[L] @ feedback(L)).reshape(h[L - 1].shape)}
    for l in range(L - 1, 0, -1):
        d[l] = delta[l] * (1 - h[l] ** 2)
        if l > 1:
            delta[l - 1] = d[l] @ feedback(l) if layers[l] is None else layers[l].input_grad(d[l], feedback(l))

    new = {k: {l: t.clone() for l, t in v.items()} for k, v in params.items()}
    for l in range(1, L + 1):
        if l == L:
            gW, gb = d[L].T @ flat, d[L].sum(0)
        elif layers[l] is None:
            gW, gb = d[l].T @ h[l - 1], d[l].sum(0)
        else:
            gW, gb = layers[l].weight_grad(h[l - 1], d[l])
        lam = decay if rule == "kp" and l >= 2 else 0.0
        new["W"][l] = W[l] - lr * (gW + lam * W[l])
        new["b"][l] = b[l] - lr * gb
        if rule == "kp" and l >= 2:
            new["B"][l] = B[l] - lr * (gW + lam * B[l])
    return new, delta
