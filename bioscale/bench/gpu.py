"""`bioscale bench gpu [--json]`: what one GPU does with these nets.

- Training throughput (images/s, ms/step, peak memory) of BP, FA, DTP and SDTP on
  `iclr_imagenet_lc` and `neurips_imagenet_lc` at 224x224, fp32 and bf16 autocast, batch
  128: one full step (forward, boundary signals, inverse losses, both Adam steps), timed
  with CUDA events after a warm-up, median over repetitions.
- The LC layers alone (forward + backward of each, the shapes the nets feed them):
  achieved TFLOP/s and bytes/s against the card's peak -- measured here (a large GEMM, a
  large device copy) and, for known cards, the data-sheet figure. FLOPs = 6·N·L·O·K per
  layer (forward, input and weight gradients); bytes = the minimum traffic: activations
  and their gradients 3×, the weight 3× (read forward, read backward, gradient written).
- DALI `mixed` (nvJPEG) decode + random-resized crop to 224 on synthetic JPEG shards (~256 px).
- The time split of one profiled SDTP step (torch.profiler, device time on CUDA, CPU
  time on CPU): GEMM (bmm/mm), unfold, fold, optimizer (Adam), elementwise + the rest
  (gpu_profile.py; the DALI part is dali_decode.py).

On CPU the same code runs at tiny sizes (16x16 inputs, batch 4, one thread, `iclr_cifar_lc` in place of
`iclr_imagenet_lc`, which needs ~224 px inputs), with bf16 as `torch.autocast("cpu")`, so
the suite keeps it working; the JSON then says `"device": "cpu"`. Budget: under 6 minutes
on one H100/H200 with the defaults."""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bioscale.bench.dali_decode import measure_dali
from bioscale.bench.gpu_profile import step_split

# Dense data-sheet peaks (no sparsity): bf16 tensor-core TFLOP/s, fp32 (non-tensor-core)
# TFLOP/s, memory bandwidth TB/s. Matched on the device name, first match wins.
SPEC_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16_tflops": 989.0, "fp32_tflops": 67.0, "tbytes_per_s": 4.8}),
    ("H100 NVL", {"bf16_tflops": 835.0, "fp32_tflops": 60.0, "tbytes_per_s": 3.9}),
    ("H100 PCIe", {"bf16_tflops": 756.0, "fp32_tflops": 51.0, "tbytes_per_s": 2.0}),
    ("H100", {"bf16_tflops": 989.0, "fp32_tflops": 67.0, "tbytes_per_s": 3.35}),
    ("A100-SXM4-80GB", {"bf16_tflops": 312.0, "fp32_tflops": 19.5, "tbytes_per_s": 2.04}),
    ("A100 80GB PCIe", {"bf16_tflops": 312.0, "fp32_tflops": 19.5, "tbytes_per_s": 1.94}),
    ("A100", {"bf16_tflops": 312.0, "fp32_tflops": 19.5, "tbytes_per_s": 1.56}),
    ("L40S", {"bf16_tflops": 362.0, "fp32_tflops": 91.6, "tbytes_per_s": 0.864}),
)
GPU_ARCHS = ("iclr_imagenet_lc", "neurips_imagenet_lc")
CPU_ARCHS = ("iclr_cifar_lc", "neurips_imagenet_lc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--archs", help=f"comma-separated (default {','.join(GPU_ARCHS)}; CPU {','.join(CPU_ARCHS)})")
    parser.add_argument("--rules", default="bp,fa,dtp,sdtp")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--size", type=int, help="input side (default 224; CPU 16)")
    parser.add_argument("--batch", type=int, help="batch (default 128; CPU 4)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; CPU 1)")
    parser.add_argument("--reps", type=int, help="timed steps, median reported (default 10; CPU 2)")
    parser.add_argument("--dali-images", type=int, help="synthetic JPEGs for the decode test (default 2048; CPU 32)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train,layers,dali,profile")


# ------------------------------------------------------------------------------------ timing


class Clock:
    """Milliseconds of `fn()`: CUDA events on a GPU (what the device did, not the host's
    launch time), the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def times(self, fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(float(start.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    def median_ms(self, fn: Callable[[], object], warmup: int, reps: int) -> float:
        return statistics.median(self.times(fn, warmup, reps))


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ parts


def _learner(arch: str, rule: str, device: torch.device, size: int):
    from bioscale.algorithms import OptimConfig, RuleConfig, Updater, build_learner
    from bioscale.models import get_arch

    spec = get_arch(arch)
    shape = (spec.input_shape[0], size, size)
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, device=device, input_shape=shape)
    return learner, Updater(learner, OptimConfig()), shape, spec.num_classes


def _batch(shape, classes: int, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return x, y


def measure_training(args, device, clock, archs, rules, precisions, log) -> dict:
    results: dict[str, Any] = {}
    for arch in archs:
        for precision in precisions:
            for rule in rules:
                key = f"{arch}/{precision}/{rule}"
                _reset_peak(device)
                try:
                    learner, updater, shape, classes = _learner(arch, rule, device, args.size)
                    x, y = _batch(shape, classes, args.batch, device)

                    def step(updater=updater, x=x, y=y, precision=precision):
                        with _autocast(device, precision):
                            updater.step(x, y)

                    ms = clock.median_ms(step, args.warmup, args.reps)
                except torch.cuda.OutOfMemoryError as exc:
                    results.setdefault(arch, {}).setdefault(precision, {})[rule] = {"error": f"out of memory: {exc}"}
                    log(f"  {key}: out of memory")
                    continue
                entry = {
                    "ms_per_step": round(ms, 3),
                    "images_per_s": round(args.batch / (ms / 1e3), 1),
                    "peak_mem_gib": _peak_gib(device),
                    "params_m": round(sum(p.numel() for p in learner.parameters()) / 1e6, 2),
                }
                results.setdefault(arch, {}).setdefault(precision, {})[rule] = entry
                log(
                    f"  {key:40s} {ms:9.2f} ms/step {entry['images_per_s']:9.1f} images/s"
                    f"  peak {entry['peak_mem_gib']} GiB"
                )
                del learner, updater, x, y
                _free(device)
    return results


def measure_peaks(device: torch.device, clock: Clock) -> dict:
    """The card's achievable peaks, measured: a square GEMM (fp32 and bf16) and a device copy."""
    n = 8192 if device.type == "cuda" else 256
    out: dict[str, Any] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = clock.median_ms(functools.partial(torch.matmul, a, b), 2, 5)
        out[f"measured_{name}_tflops"] = round(2 * n**3 / (ms / 1e3) / 1e12, 3)
        del a, b
    numel = (2**28 if device.type == "cuda" else 2**23) // 4  # 256 MiB on GPU, 8 MiB on CPU (fp32)
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    ms = clock.median_ms(functools.partial(dst.copy_, src), 2, 5)
    out["measured_gbytes_per_s"] = round(2 * numel * 4 / (ms / 1e3) / 1e9, 1)
    src = dst = torch.empty(0)
    spec = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = next((dict(v) for k, v in SPEC_PEAKS if k in name), None)
    out["spec"] = spec
    _free(device)
    return out


def _lc_modules(net) -> list:
    from bioscale.models.locally_connected import LocallyConnected2d

    return [m for m in net.modules() if isinstance(m, LocallyConnected2d)]


def measure_lc_layers(args, device, clock, archs, precisions, peaks, log) -> dict:
    results: dict[str, Any] = {}
    for arch in archs:
        learner, _, shape, classes = _learner(arch, "bp", device, args.size)
        layers = _lc_modules(learner.net)
        inputs: dict[int, torch.Size] = {}
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, i=i, inputs=inputs: inputs.__setitem__(i, inp[0].shape))
            for i, m in enumerate(layers)
        ]
        with torch.no_grad():
            learner.net(_batch(shape, classes, args.batch, device)[0])
        for h in hooks:
            h.remove()
        for precision in precisions:
            rows, total_ms, total_flops, total_bytes = [], 0.0, 0.0, 0.0
            for i, layer in enumerate(layers):
                x = torch.randn(inputs[i], device=device, requires_grad=True)
                with torch.no_grad(), _autocast(device, precision):
                    y_shape = layer(x).shape
                dy = torch.randn(y_shape, device=device)

                def fwd_bwd(layer=layer, x=x, dy=dy, precision=precision):
                    with _autocast(device, precision):  # backward inside autocast, as the trainer does
                        y = layer(x)
                        y.backward(dy.to(y.dtype))

                ms = clock.median_ms(fwd_bwd, args.warmup, args.reps)
                act = 2 if precision == "bf16" else 4
                positions, out_ch, fan_in = layer.weight.shape
                flops = 6.0 * x.shape[0] * positions * out_ch * fan_in
                traffic = (
                    act * 3.0 * (x.numel() + dy.numel()) + layer.weight.element_size() * 3.0 * layer.weight.numel()
                )
                rows.append(
                    {
                        "layer": i + 1,
                        "input": list(inputs[i]),
                        "weight": list(layer.weight.shape),
                        "ms": round(ms, 4),
                        "tflops": round(flops / (ms / 1e3) / 1e12, 4),
                        "gbytes_per_s": round(traffic / (ms / 1e3) / 1e9, 2),
                        "flop_per_byte": round(flops / traffic, 2),
                    }
                )
                total_ms, total_flops, total_bytes = total_ms + ms, total_flops + flops, total_bytes + traffic
                layer.zero_grad(set_to_none=True)
                del x, dy
            tflops = total_flops / (total_ms / 1e3) / 1e12
            gbs = total_bytes / (total_ms / 1e3) / 1e9
            summary: dict[str, Any] = {
                "ms": round(total_ms, 3),
                "tflops": round(tflops, 4),
                "gbytes_per_s": round(gbs, 2),
                "flop_per_byte": round(total_flops / total_bytes, 2),
                "frac_measured_peak_flops": round(tflops / max(peaks[f"measured_{precision}_tflops"], 1e-9), 4),
                "frac_measured_peak_bytes": round(gbs / max(peaks["measured_gbytes_per_s"], 1e-9), 4),
            }
            spec = peaks.get("spec")
            if spec:
                summary["frac_spec_peak_flops"] = round(tflops / spec[f"{precision}_tflops"], 4)
                summary["frac_spec_peak_bytes"] = round(gbs / (spec["tbytes_per_s"] * 1e3), 4)
            results.setdefault(arch, {})[precision] = {"layers": rows, "total": summary}
            log(
                f"  LC layers {arch}/{precision}: {total_ms:.2f} ms fwd+bwd, {tflops:.3f} TFLOP/s "
                f"({100 * summary['frac_measured_peak_flops']:.1f}% of GEMM peak), {gbs:.1f} GB/s "
                f"({100 * summary['frac_measured_peak_bytes']:.1f}% of copy bandwidth)"
            )
        del learner, layers
        _free(device)
    return results


def profile_split(args, device, arch: str, rule: str, precision: str) -> dict:
    """One step of `rule` on `arch`, split by kernel category (gpu_profile.step_split)."""
    learner, updater, shape, classes = _learner(arch, rule, device, args.size)
    x, y = _batch(shape, classes, args.batch, device)

    def step():
        with _autocast(device, precision):
            updater.step(x, y)

    split = step_split(step, device, args.warmup)
    _free(device)
    time_kind = "device" if device.type == "cuda" else "cpu"
    return {"arch": arch, "rule": rule, "precision": precision, "time": time_kind, **split}


# ------------------------------------------------------------------------------------ entry


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        from bioscale.data_pipeline.errors import UserError

        raise UserError(f"--device cuda but torch sees no CUDA device (torch {torch.__version__})")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_num_threads(1)  # tiny ops on shared cores: more threads only add contention
    archs = tuple(a for a in (args.archs.split(",") if args.archs else (GPU_ARCHS if gpu else CPU_ARCHS)) if a)
    rules = tuple(r for r in args.rules.split(",") if r)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    skip = {s for s in args.skip.split(",") if s}
    args.size = args.size or (224 if gpu else 16)
    args.batch = args.batch or (128 if gpu else 4)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.reps = args.reps or (10 if gpu else 2)
    args.dali_images = args.dali_images or (2048 if gpu else 32)
    log = lambda line: print(line, flush=True)
    clock = Clock(device)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    log(
        f"bench gpu on {name}: {', '.join(archs)} at {args.size}x{args.size}, batch {args.batch}, "
        f"{'/'.join(precisions)}, {args.warmup} warm-up + {args.reps} timed steps"
    )
    result: dict[str, Any] = {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size,
        "batch": args.batch,
        "warmup": args.warmup,
        "reps": args.reps,
        "archs": list(archs),
        "rules": list(rules),
        "precisions": list(precisions),
        "timing": "cuda events" if gpu else "wall clock",
    }
    peaks = measure_peaks(device, clock)
    result["peak"] = peaks
    log(
        f"  peaks: GEMM fp32 {peaks['measured_fp32_tflops']} / bf16 {peaks['measured_bf16_tflops']} TFLOP/s, "
        f"copy {peaks['measured_gbytes_per_s']} GB/s (measured); data sheet {peaks['spec']}"
    )
    if "train" not in skip:
        result["throughput"] = measure_training(args, device, clock, archs, rules, precisions, log)
    if "layers" not in skip:
        result["lc_layers"] = measure_lc_layers(args, device, clock, archs, precisions, peaks, log)
    if "profile" not in skip:
        profile_rule = "sdtp" if "sdtp" in rules else rules[0]
        result["profile"] = {arch: profile_split(args, device, arch, profile_rule, precisions[-1]) for arch in archs}
        for arch, split in result["profile"].items():
            log(
                f"  profile {arch}/{split['precision']}/{split['rule']}: "
                + ", ".join(f"{k} {v}%" for k, v in split["pct"].items())
            )
    if "dali" not in skip:
        try:
            result["dali"] = measure_dali(args, device, log)
        except Exception as exc:  # a decode benchmark failing must not lose the rest
            result["dali"] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            log(f"  DALI: failed: {result['dali']['error']}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result
