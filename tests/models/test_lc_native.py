"""The native LC kernels (`models/lc_native.cpp`) against the PyTorch ones at the sizes the
nets use (float32, the batch a whole number of vectors or not), their threading, and their
build: cached per machine, and a machine without a compiler falls back with one log line.
Small float64 layers and every layer gradient: tests/models/test_lc_chunked.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bioscale.models import LocallyConnected2d, lc_native, lc_ops

pytestmark = pytest.mark.skipif(not lc_native.usable(torch.zeros(1)), reason="the native LC kernels did not build")

LAYERS = [
    # c, o, size, kernel, stride, padding: iclr_mnist_lc's four layers, iclr_imagenet_lc's first
    (1, 32, (28, 28), 3, 2, "same"),
    (32, 16, (14, 14), 3, 1, "same"),
    (16, 10, (14, 14), 3, 1, "valid"),
    (3, 6, (30, 30), 9, 4, "same"),
]


@pytest.mark.parametrize("c, o, size, kernel, stride, padding", LAYERS)
@pytest.mark.parametrize("n", [128, 37])
def test_native_kernels_match_the_pytorch_kernels_in_float32(c, o, size, kernel, stride, padding, n):
    torch.manual_seed(0)
    layer = LocallyConnected2d(c, o, size, kernel, stride, padding)
    g, w = layer.geometry, layer.weight.detach()
    x = torch.randn(*size, c, n)
    y = torch.randn(g.num_positions, o, n)
    bias = torch.randn(g.num_positions, o, 1)
    acc = torch.randn(*size, c, n)
    bias_hwc = torch.randn(*size, c)
    with lc_native.disabled():
        ref = [
            lc_ops.lc_matmul(w, x, g, bias),
            lc_ops.lc_adjoint(w, y, g, c),
            lc_ops.lc_adjoint(w, y, g, c, out=acc.clone()),
            lc_ops.lc_adjoint(w, y, g, c, out=bias_hwc[..., None].expand(*size, c, n).contiguous()),
            lc_ops.lc_weight_grad(y, x, g),
        ]
    got = [
        lc_native.forward(w, x, g, bias.view(-1, o)),
        lc_native.adjoint(w, y, g, c),
        lc_native.adjoint(w, y, g, c, out=acc.clone()),
        lc_native.adjoint(w, y, g, c, bias_hwc=bias_hwc),
        lc_native.weight_grad(y, x, g),
    ]
    for r, t in zip(ref, got, strict=True):
        scale = r.abs().max().item()
        torch.testing.assert_close(t, r, rtol=0, atol=2e-6 * scale)


def test_every_output_number_is_the_same_sum_whichever_vector_tile_computes_it():
    """Rows, channels and samples that hold the same numbers get bit-identical results, whether
    a full register tile or a single-vector tail computes them (n = 112 and kw*C = 80 reach
    both with AVX-512 and AVX2 vectors; no scalar tail). GCC tuned for AMD Zen left a lone
    multiply-add chain unfused, so the tails rounded differently (lc_native.GCC_FLAGS)."""
    torch.manual_seed(0)
    n, size = 112, (9, 9)
    x = torch.randn(*size, 1, 1)
    for c, o, k in [(18, 6, 3), (16, 6, 5)]:  # C = 18: a channel tail in the adjoint; kw*C = 80
        layer = LocallyConnected2d(c, o, size, k, 1, "same")
        g, p = layer.geometry, layer.geometry.num_positions
        xc = x.expand(*size, c, n).contiguous()  # every channel and sample the same
        w = layer.weight.detach()[:, :1].expand_as(layer.weight).contiguous()  # every row the same
        out = lc_native.forward(w, xc, g)
        assert torch.equal(out, out[:, :1, :1].expand_as(out))
        w_c = layer.weight.detach().view(p, o, -1, c)[..., :1].expand(-1, -1, -1, c).reshape(p, o, -1)
        y = torch.randn(p, o, 1).expand(-1, -1, n).contiguous()
        adj = lc_native.adjoint(w_c.contiguous(), y, g, c)  # weights the same over channels
        assert torch.equal(adj, adj[..., :1, :1].expand_as(adj))
        grad = torch.randn(p, 1, n).expand(-1, o, -1).contiguous()  # the same over rows
        gw = lc_native.weight_grad(grad, xc, g).view(p, o, k * k, c)
        assert torch.equal(gw, gw[:, :1, :, :1].expand_as(gw))


def test_threads_split_the_work_without_changing_a_bit():
    torch.manual_seed(0)
    layer = LocallyConnected2d(32, 16, (14, 14), 3, 1, "same")
    g, w = layer.geometry, layer.weight.detach()
    x, y = torch.randn(14, 14, 32, 64), torch.randn(g.num_positions, 16, 64)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            results.append([lc_native.forward(w, x, g), lc_native.adjoint(w, y, g, 32), lc_native.weight_grad(y, x, g)])
    finally:
        torch.set_num_threads(before)
    for one, three in zip(*results, strict=True):
        assert torch.equal(one, three)


def test_two_python_threads_in_the_kernels_at_once_get_their_own_results():
    """The worker pool serves one call at a time; a second caller runs its call serially."""
    import threading

    torch.manual_seed(0)
    layer = LocallyConnected2d(16, 16, (14, 14), 3, 1, "same")
    g, w = layer.geometry, layer.weight.detach()
    xs = [torch.randn(14, 14, 16, 32) for _ in range(4)]
    expected = [lc_native.forward(w, x, g) for x in xs]
    got: dict[int, list[torch.Tensor]] = {}

    def work(k):
        got[k] = [lc_native.forward(w, xs[(k + r) % 4], g) for r in range(40)]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(before)
    for k, outs in got.items():
        for r, out in enumerate(outs):
            assert torch.equal(out, expected[(k + r) % 4])


def test_a_forked_child_gets_its_own_worker_pool():
    """After fork() the parent's pool threads do not exist in the child: it must not wait for them."""
    script = textwrap.dedent(
        """
        import os, torch
        from bioscale.models import LocallyConnected2d, lc_native
        torch.set_num_threads(2)
        layer = LocallyConnected2d(16, 16, (14, 14), 3, 1, "same")
        x = torch.randn(14, 14, 16, 32)
        ref = lc_native.forward(layer.weight.detach(), x, layer.geometry)  # starts the parent's pool
        pid = os.fork()
        if pid == 0:
            out = lc_native.forward(layer.weight.detach(), x, layer.geometry)
            os._exit(0 if torch.equal(out, ref) else 3)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "exit", "0"]


_PROBE = textwrap.dedent(
    """
    import logging, torch
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from bioscale.models import LocallyConnected2d, lc_native
    layer = LocallyConnected2d(3, 4, (9, 9), 3, 1, "same")
    for _ in range(2):
        layer(torch.randn(2, 3, 9, 9)).sum().backward()
    print("native" if lc_native.usable(torch.zeros(1)) else "torch")
    """
)


def _probe(home: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "PATH": path}
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)


def test_the_build_is_cached_per_machine(tmp_path):
    first = _probe(tmp_path, os.environ["PATH"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["native"]
    (lib,) = (tmp_path / ".cache" / "bioscale" / "lc_native").glob("lc_native-*.so")
    built = lib.stat().st_mtime_ns
    again = _probe(tmp_path, os.environ["PATH"])
    assert again.stdout.split() == ["native"], again.stderr
    assert lib.stat().st_mtime_ns == built  # loaded, not rebuilt
    assert not list(lib.parent.glob("*.tmp"))


def test_without_a_compiler_the_layers_fall_back_with_one_warning(tmp_path):
    bare = tmp_path / "bin"  # a PATH with this Python and nothing else
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    done = _probe(tmp_path / "home", str(bare))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torch"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0], done.stderr
