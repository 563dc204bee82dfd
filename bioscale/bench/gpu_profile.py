"""The time split of one training step by kernel category (`bioscale bench gpu`'s profile
part): torch.profiler self time of every operator (device time on CUDA, CPU time on the CPU),
summed into GEMM (bmm/mm), the LC layers' unfold and fold, the optimizer (Adam) and
elementwise + the rest. Unfold and fold are labelled with `record_function` for the run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

CATEGORIES = ("gemm", "unfold", "fold", "elementwise", "optimizer")
GEMM_OPS = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::addbmm", "aten::_scaled_mm"}


@contextlib.contextmanager
def _labelled_lc_kernels() -> Iterator[None]:
    """Label the LC layers' unfold and fold kernels for the profiler (`record_function`
    around `lc_ops.unfold_` / `fold_`, looked up by name at call time); restored after."""
    from bioscale.models import lc_ops

    saved = {name: getattr(lc_ops, name, None) for name in ("unfold_", "fold_")}

    def labelled(fn, label):
        def wrapper(*a, **k):
            with torch.profiler.record_function(label):
                return fn(*a, **k)

        return wrapper

    try:
        for name, fn in saved.items():
            if fn is not None:
                setattr(lc_ops, name, labelled(fn, f"bioscale::{name.rstrip('_')}"))
        yield
    finally:
        for name, fn in saved.items():
            if fn is not None:
                setattr(lc_ops, name, fn)


def _category(evt) -> str:
    node = evt
    while node is not None:
        name = node.name
        if name == "bioscale::unfold":
            return "unfold"
        if name == "bioscale::fold":
            return "fold"
        if name.startswith("Optimizer.step") or name.startswith("Optimizer.zero_grad"):
            return "optimizer"
        node = node.cpu_parent
    return "gemm" if evt.name in GEMM_OPS else "elementwise"


def step_split(step: Callable[[], object], device: torch.device, warmup: int) -> dict:
    """Self time of every operator of one `step()` (after `warmup` untimed ones), summed by
    category: {'step_wall_ms', 'ms': {category: ms}, 'pct': {category: %}}."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    for _ in range(max(1, warmup)):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _labelled_lc_kernels(), profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        sync()
        wall_ms = (time.perf_counter() - t0) * 1e3
    us = dict.fromkeys(CATEGORIES, 0.0)
    for evt in prof.events():
        if cuda:
            value = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
        else:
            value = float(evt.self_cpu_time_total or 0.0)
        if value > 0:
            us[_category(evt)] += value
    total = sum(us.values()) or 1.0
    return {
        "step_wall_ms": round(wall_ms, 3),
        "ms": {k: round(v / 1e3, 3) for k, v in us.items()},
        "pct": {k: round(100 * v / total, 1) for k, v in us.items()},
    }
