"""`bioscale bench layers`: locally-connected layers against their Conv2d twins.

One process, one thread. Times are per-thread CPU time (`time.thread_time`,
immune to other processes on a shared machine), medians over repetitions in
which the compared variants alternate, so drift hits both sides alike.

Measurements are functions `measure_*(ctx) -> dict` listed in MEASUREMENTS;
each returns flat JSON-able keys and logs a human line. To add one (e.g. the
DTP-step / BP-step ratio, key `dtp_vs_bp_step_ratio`, owned by algorithms/),
write such a function with `ctx.compare({...})` and append it to the list.

Allocator: glibc returns freed memory to the OS after every step and the next
step page-faults it back (~2 GB/s in these VMs), a cost that varies from run
to run and swamps the layers. Unless --default-malloc is given, the bench first
tells glibc to keep freed memory (mallopt); both sides of every ratio run
under the same setting.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bioscale.algorithms import OptimConfig, RuleConfig, Updater, build_learner
from bioscale.bench.timing import Context
from bioscale.models.locally_connected import LocallyConnected2d
from bioscale.training.host_memory import keep_freed_memory

# ICLR 2018 CIFAR-10 LC net: (out_channels, kernel, stride), SAME, input 3×32×32, tanh, then linear softmax.
CIFAR_LC = [(32, 3, 2), (32, 3, 2), (16, 3, 1), (16, 3, 2), (10, 1, 1)]
# ICLR 2018 ImageNet LC layers: (input C, H, W), out_channels, kernel, stride; SAME.
IMAGENET_LC = {
    "i1": ((3, 224, 224), 48, 9, 4),
    "i2": ((48, 27, 27), 64, 5, 1),
    "i3": ((64, 13, 13), 96, 3, 1),
    "i4": ((96, 6, 6), 128, 3, 1),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="few repetitions, small sgemm (smoke test)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 30, quick 2)")
    parser.add_argument("--batch", type=int, default=128, help="CIFAR net batch size")
    parser.add_argument("--imagenet-batch", type=int, default=32, help="ImageNet layer batch size")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator thresholds alone (expect page-fault noise)",
    )


def measure_sgemm_peak(ctx: Context) -> dict:
    n = 1024 if ctx.quick else 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = ctx.compare({"mm": lambda: torch.mm(a, b)}, reps=3 if ctx.quick else 7)["mm"]
    gflops = 2 * n**3 / ms / 1e6
    ctx.results["sgemm_peak_gflops"] = gflops
    ctx.log(f"sgemm peak (torch.mm {n}²): {gflops:.0f} GFLOP/s")
    return {"sgemm_peak_gflops": round(gflops, 1)}


class _CifarNet(nn.Module):
    """The CIFAR LC net (kind='lc') or its Conv2d twin (kind='conv', same shapes; padding k//2
    gives the SAME output sizes here and is conv's fastest form)."""

    def __init__(self, kind: str, recompute_unfold: bool = False):
        super().__init__()
        layers, (c, h) = [], (3, 32)
        for o, k, s in CIFAR_LC:
            layer = (
                LocallyConnected2d(c, o, (h, h), k, s, "same", recompute_unfold=recompute_unfold)
                if kind == "lc"
                else nn.Conv2d(c, o, k, s, padding=k // 2)
            )
            layers.append(layer)
            c, h = o, -(-h // s)
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(c * h * h, 10)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x.flatten(1))


def _train_step(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    def step():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), target).backward()

    return step


def _step_gflop(net: _CifarNet, batch: int) -> float:
    """Multiply-adds ×2 of forward + weight gradient + input gradient (none for the first layer)."""
    total = 0
    for i, layer in enumerate(net.layers):
        assert isinstance(layer, LocallyConnected2d)  # counted for the LC net (kind='lc')
        total += 2 * batch * layer.num_positions * layer.out_channels * layer.fan_in * (2 if i == 0 else 3)
    return total / 1e9


def measure_cifar(ctx: Context) -> dict:
    torch.manual_seed(0)
    x, target = torch.randn(ctx.batch, 3, 32, 32), torch.randint(0, 10, (ctx.batch,))
    lc = _CifarNet("lc")
    ms = ctx.compare(
        {
            "lc": _train_step(lc, x, target),
            "lc_recompute": _train_step(_CifarNet("lc", recompute_unfold=True), x, target),
            "conv": _train_step(_CifarNet("conv"), x, target),
        }
    )
    ratio = ms["lc"] / ms["conv"]
    # Both nets do the same layer FLOPs; the floor is the LC GEMMs alone at the measured sgemm peak.
    gflop, peak = _step_gflop(lc, ctx.batch), ctx.results.get("sgemm_peak_gflops")
    floor = f", LC GEMMs at sgemm peak alone {gflop / peak * 1e3:.1f} ms" if peak else ""
    ctx.log(
        f"CIFAR LC net fwd+bwd, batch {ctx.batch}: LC {ms['lc']:.1f} ms "
        f"(recompute_unfold {ms['lc_recompute']:.1f} ms), conv twin {ms['conv']:.1f} ms, ratio {ratio:.2f}; "
        f"{gflop:.2f} GFLOP: LC {gflop / ms['lc'] * 1e3:.0f} GFLOP/s, conv {gflop / ms['conv'] * 1e3:.0f} GFLOP/s"
        f"{floor}"
    )
    out = {
        "cifar_lc_ms": round(ms["lc"], 2),
        "cifar_lc_recompute_ms": round(ms["lc_recompute"], 2),
        "cifar_conv_ms": round(ms["conv"], 2),
        "cifar_lc_vs_conv_ratio": round(ratio, 3),
        "cifar_step_gflop": round(gflop, 3),
    }
    if peak:
        out["cifar_lc_gemm_floor_ms"] = round(gflop / peak * 1e3, 2)
    return out


def _layer_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step():
        layer.zero_grad(set_to_none=True)
        if x.grad is not None:
            x.grad = None
        layer(x).backward(grad)

    return step


def measure_imagenet_layers(ctx: Context) -> dict:
    out, n = {}, ctx.imagenet_batch
    peak = ctx.results.get("sgemm_peak_gflops")
    for name, ((c, h, w), o, k, s) in IMAGENET_LC.items():
        torch.manual_seed(0)
        lc = LocallyConnected2d(c, o, (h, w), k, s, "same")
        conv = nn.Conv2d(c, o, k, s, padding=k // 2)
        # The first layer's input gradient is never needed; the others' is.
        x = torch.randn(n, c, h, w, requires_grad=name != "i1")
        grad = torch.randn(n, o, *lc.output_size)
        ms = ctx.compare(
            {"lc": _layer_step(lc, x, grad), "conv": _layer_step(conv, x, grad)},
            reps=min(ctx.reps, 3 if ctx.quick else 10),
        )
        passes = 3 if x.requires_grad else 2  # forward, weight gradient[, input gradient]
        gflop = 2 * n * lc.num_positions * o * lc.fan_in * passes / 1e9
        lc_gflops, conv_gflops = gflop / ms["lc"] * 1e3, gflop / ms["conv"] * 1e3
        frac = f", {lc_gflops / peak:.0%} of sgemm peak" if peak else ""
        ctx.log(
            f"ImageNet {name} fwd+bwd, batch {n}: LC {ms['lc']:.1f} ms ({lc_gflops:.0f} GFLOP/s{frac}), "
            f"conv {ms['conv']:.1f} ms ({conv_gflops:.0f} GFLOP/s), ratio {ms['lc'] / ms['conv']:.2f}"
        )
        out.update(
            {
                f"imagenet_{name}_lc_ms": round(ms["lc"], 2),
                f"imagenet_{name}_conv_ms": round(ms["conv"], 2),
                f"imagenet_{name}_lc_vs_conv_ratio": round(ms["lc"] / ms["conv"], 3),
                f"imagenet_{name}_lc_gflops": round(lc_gflops, 1),
                f"imagenet_{name}_conv_gflops": round(conv_gflops, 1),
            }
        )
        if peak:
            out[f"imagenet_{name}_lc_peak_fraction"] = round(lc_gflops / peak, 3)
        del lc, conv, x, grad
    return out


def measure_transpose(ctx: Context) -> dict:
    """LCᵀ·y for every CIFAR-net layer, batch as the net: explicit (bmm with Wᵀ, fold) vs the
    paper's appendix trick (autograd of a dummy forward z = A·x through the same fast layer)."""
    torch.manual_seed(0)
    pairs, (c, h) = [], (3, 32)
    for o, k, s in CIFAR_LC:
        layer = LocallyConnected2d(c, o, (h, h), k, s, "same").requires_grad_(False)
        y = torch.tanh(torch.randn(ctx.batch, o, *layer.output_size))
        pairs.append((layer, layer.transpose().requires_grad_(False), y))
        c, h = o, layer.output_size[0]

    def explicit():
        with torch.no_grad():
            for _, t, y in pairs:
                t(y)

    def dummy():
        for layer, _, y in pairs:
            x0 = torch.zeros(y.shape[0], layer.in_channels, *layer.input_size, requires_grad=True)
            torch.autograd.grad(layer(x0), x0, y)

    ms = ctx.compare({"explicit": explicit, "dummy": dummy})
    ratio = ms["dummy"] / ms["explicit"]
    ctx.log(
        f"LC transpose, CIFAR net layers, batch {ctx.batch}: explicit {ms['explicit']:.2f} ms, "
        f"dummy-forward autograd {ms['dummy']:.2f} ms ({ratio:.2f}× slower)"
    )
    return {
        "transpose_explicit_ms": round(ms["explicit"], 3),
        "transpose_dummy_forward_ms": round(ms["dummy"], 3),
        "transpose_dummy_vs_explicit_ratio": round(ratio, 3),
    }


def measure_dtp_vs_bp_step(ctx: Context) -> dict:
    """A whole training step (forward, backward with the rule's boundary signals and inverse
    losses, both Adam steps) of the registry's CIFAR LC net: DTP vs BP, same batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ctx.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (ctx.batch,), generator=g)
    steps = {}
    for rule in ("bp", "dtp", "sdtp"):
        updater = Updater(build_learner("iclr_cifar_lc", RuleConfig(rule=rule), seed=0), OptimConfig())
        steps[rule] = (lambda u: lambda: u.step(x, y))(updater)
    ms = ctx.compare(steps)
    ctx.log(
        f"CIFAR LC net step, batch {ctx.batch}: BP {ms['bp']:.1f} ms, DTP {ms['dtp']:.1f} ms "
        f"({ms['dtp'] / ms['bp']:.2f}×), SDTP {ms['sdtp']:.1f} ms ({ms['sdtp'] / ms['bp']:.2f}×)"
    )
    return {
        "bp_step_ms": round(ms["bp"], 2),
        "dtp_step_ms": round(ms["dtp"], 2),
        "sdtp_step_ms": round(ms["sdtp"], 2),
        "dtp_vs_bp_step_ratio": round(ms["dtp"] / ms["bp"], 3),
        "sdtp_vs_bp_step_ratio": round(ms["sdtp"] / ms["bp"], 3),
    }


# The layers of iclr_mnist_lc and ImageNet's first: (C, H, W), out_channels, kernel, stride, padding.
LC_KERNEL_LAYERS = {
    "m1": ((1, 28, 28), 32, 3, 2, "same"),
    "m2": ((32, 14, 14), 16, 3, 1, "same"),
    "m3": ((16, 14, 14), 16, 3, 1, "same"),
    "m4": ((16, 14, 14), 10, 3, 1, "valid"),
    "i1": ((3, 224, 224), 48, 9, 4, "same"),
}


def _lc_kernel_ops(weight, x, y, g, c) -> dict[str, Callable[[], object]]:
    from bioscale.models import lc_ops

    return {
        "forward": lambda: lc_ops.lc_matmul(weight, x, g),
        "weight_grad": lambda: lc_ops.lc_weight_grad(y, x, g),
        "adjoint": lambda: lc_ops.lc_adjoint(weight, y, g, c),
    }


def measure_lc_kernels(ctx: Context) -> dict:
    """The LC kernels one by one, native (`lc_native`) against PyTorch (`lc_ops` with
    `lc_native.disabled()`), alternating; the weight gradient as `lc_ops` dispatches it (few
    input channels stay on PyTorch). Batch `--batch` (`--imagenet-batch` for i1)."""
    from bioscale.models import lc_native

    if not lc_native.usable(torch.zeros(1)):
        ctx.log("lc kernels: native kernels not built here, skipped")
        return {"lc_kernels_native": False}
    out: dict = {"lc_kernels_native": True}
    for name, ((c, h, w), o, k, s, pad) in LC_KERNEL_LAYERS.items():
        if ctx.quick and name == "i1":
            continue
        layer = LocallyConnected2d(c, o, (h, w), k, s, pad)
        g, weight = layer.geometry, layer.weight.detach()
        n = ctx.imagenet_batch if name.startswith("i") else ctx.batch
        x, y = torch.randn(h, w, c, n), torch.randn(g.num_positions, o, n)
        ops = _lc_kernel_ops(weight, x, y, g, c)
        for op, fn in ops.items():

            def on_torch(fn=fn):
                with lc_native.disabled():
                    fn()

            ms = ctx.compare({"native": fn, "torch": on_torch})
            key = f"lc_kernels_{name}_{op}"
            out[f"{key}_ms"], out[f"{key}_torch_ms"] = round(ms["native"], 3), round(ms["torch"], 3)
            out[f"{key}_speedup"] = round(ms["torch"] / ms["native"], 3)
            ctx.log(
                f"lc kernels {name} {op:11s} native {ms['native']:7.2f} ms  PyTorch {ms['torch']:7.2f} ms  "
                f"{ms['torch'] / ms['native']:.2f}×"
            )
    return out


MEASUREMENTS: list[Callable[[Context], dict]] = [
    measure_sgemm_peak,
    measure_cifar,
    measure_imagenet_layers,
    measure_transpose,
    measure_dtp_vs_bp_step,
    measure_lc_kernels,
]


def run(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        malloc_tuned = False if args.default_malloc else keep_freed_memory()
        ctx = Context(
            quick=args.quick,
            reps=args.reps or (2 if args.quick else 30),
            warmup=1 if args.quick else 5,
            batch=args.batch,
            imagenet_batch=args.imagenet_batch,
        )
        result = {"threads": 1, "malloc_tuned": malloc_tuned, "quick": bool(args.quick), "torch": torch.__version__}
        for measure in MEASUREMENTS:
            result.update(measure(ctx))
        return result
    finally:
        torch.set_num_threads(threads)
