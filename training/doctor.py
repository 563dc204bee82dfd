"""`bioscale doctor`: what to run first on a new node. It reports the software stack (torch,
its CUDA build, cuDNN, NCCL, the driver, DALI and its CUDA build, DeepSpeed), the GPUs torch
sees, whether DALI's CUDA build fits the driver, the process environment (single / torchrun /
SLURM / DeepSpeed launcher, read by `bioscale.distributed`), and then trains one step of every
learning rule on the chosen device with the configured architecture, dtype and precision:
the loss, the local and inverse losses, the signal crossing every block boundary (the
gradient that arrives at each h_l), every parameter gradient and the updated weights must
be finite.

Each check is one line: ok / warn / FAIL / info. Any FAIL makes `run_checks` report it and
`DoctorError` (exit status 1) carry the first reason in one line. Nothing is written and no
process group is started, so the doctor is also safe on a login node."""

from __future__ import annotations

import time
from typing import Any

import torch

from bioscale.data_pipeline.errors import UserError
from bioscale.training.doctor_stack import (
    DoctorError,
    Report,
    check_dali,
    check_environment,
    check_gpus,
    check_lc_kernels,
    check_versions,
)

__all__ = ["DoctorError", "Report", "run_checks", "step_once"]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


MIN_SIGNAL_COSINE = 0.99
"""Lowest per-layer cosine between bf16 and float32 boundary signals the doctor accepts."""


def step_once(cfg, rule: str, device: torch.device, batch: int) -> dict[str, Any]:
    """One training step of `rule` on random inputs of the configured architecture, the way
    the trainer takes it (autocast around forward and backward). Returns measurements;
    raises `RuntimeError` naming what is not finite."""
    from bioscale.algorithms import RuleConfig, Updater, build_learner, signal_cosines
    from bioscale.models import get_arch
    from bioscale.training.divergence import check_step
    from bioscale.training.trainer import DTYPES

    spec = get_arch(cfg.model.arch)
    rule_cfg = (
        cfg.algorithm
        if rule == cfg.algorithm.rule
        else RuleConfig(rule=rule, feedback_seed=cfg.algorithm.feedback_seed)
    )
    dtype = DTYPES[cfg.model.dtype]
    t0 = time.perf_counter()
    learner = build_learner(cfg.model.arch, rule_cfg, seed=cfg.seed, device=device, dtype=dtype)
    updater = Updater(learner, cfg.optim)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(batch, *spec.input_shape, generator=g).to(device, dtype)
    y = torch.randint(0, spec.num_classes, (batch,), generator=g).to(device)
    autocast = torch.bfloat16 if cfg.distributed.precision == "bf16" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    for opt in updater.optimizers():
        opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        out = learner(x, y, phase="both")
        hidden = [h for h in out.hidden if h.requires_grad]
        for h in hidden:
            h.retain_grad()
        out.loss.backward()
    check_step(1, out, learner)  # loss, local (target-gap) and inverse losses
    fidelity = None
    if autocast is not None:
        # bf16 must keep the rule's signals: cosine with the float32 signals of the same
        # weights and batch (a bf16 g(h) − g(h − δ) measured 0.004-0.11 for DTP)
        fidelity = min(signal_cosines(learner, x, y, autocast).values(), default=1.0)
        if not fidelity > MIN_SIGNAL_COSINE:
            raise RuntimeError(
                f"bf16 signals have cosine {fidelity:.4f} with the float32 ones (need > {MIN_SIGNAL_COSINE})"
            )
    for l, h in enumerate(out.hidden, 1):
        if h.requires_grad and h.grad is not None and not _finite(h.grad):
            raise RuntimeError(f"layer {l}: the signal arriving at h_{l} holds NaN/inf")
    for name, p in learner.named_parameters():
        if p.grad is not None and not _finite(p.grad):
            raise RuntimeError(f"gradient of {name} holds NaN/inf")
    for opt in updater.optimizers():
        opt.step()
    for name, p in learner.named_parameters():
        if not _finite(p):
            raise RuntimeError(f"parameter {name} holds NaN/inf after the optimizer step")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    signals = sum(1 for h in hidden if h.grad is not None)
    return {
        "loss": float(out.task_loss) / batch,
        "signals": signals,
        "inverse_layers": len(out.inverse_losses),
        "bf16_signal_cosine": None if fidelity is None else round(fidelity, 6),
        "build_s": round(t1 - t0, 3),
        "step_s": round(t2 - t1, 3),
    }


def _check_steps(report: Report, cfg, device: torch.device, batch: int) -> None:
    from bioscale.algorithms import RULES

    results: dict[str, Any] = {}
    report.facts["steps"] = results
    where = f"{cfg.model.arch} {cfg.model.dtype} {cfg.distributed.precision} on {device}, batch {batch}"
    report.add("steps", "info", f"one training step of every rule: {where}")
    for rule in RULES:
        try:
            res = step_once(cfg, rule, device, batch)
        except (RuntimeError, ValueError, UserError) as exc:  # OOM, cuBLAS, NaN, a rule refusing the config
            text = " ".join(str(exc).split())
            results[rule] = {"ok": False, "error": text}
            report.add(f"step {rule}", "FAIL", text[:400])
            continue
        results[rule] = {"ok": True, **res}
        report.add(
            f"step {rule}",
            "ok",
            f"loss {res['loss']:.4f}/sample, {res['signals']} boundary signals and "
            f"{res['inverse_layers']} inverse losses finite, {1000 * res['step_s']:.0f} ms"
            + ("" if res["bf16_signal_cosine"] is None else f", bf16 signals cosine ≥ {res['bf16_signal_cosine']:.4f}"),
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- entry


def run_checks(
    config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
    batch: int | None = None,
    steps: bool = True,
    echo=None,
) -> Report:
    """Every check; `echo(line)` is called as each finishes. `device` overrides
    distributed.device; `batch` defaults to the configured batch on CUDA and at most 16 on CPU."""
    from bioscale.distributed import local_device
    from bioscale.training.config_loader import load_config

    report = Report()
    start = time.perf_counter()
    emitted = 0

    def flush():
        nonlocal emitted
        if echo is not None:
            for c in report.checks[emitted:]:
                echo(c.line())
        emitted = len(report.checks)

    overrides = list(overrides) + ([f"distributed.device={device}"] if device else [])
    cfg = load_config(config, overrides)  # ConfigError: one line, exit 2
    check_versions(report)
    check_lc_kernels(report)
    check_gpus(report)
    env = check_environment(report)
    flush()
    dev: torch.device | None = None
    if env is not None:
        try:
            dev = local_device(env, cfg.distributed.device)
        except (RuntimeError, ValueError) as exc:
            report.add("device", "FAIL", " ".join(str(exc).split()))
        else:
            report.add("device", "ok", f"{dev} (distributed.device={cfg.distributed.device})")
            if cfg.distributed.precision == "bf16" and dev.type == "cuda":
                if not torch.cuda.is_bf16_supported():
                    report.add("precision", "FAIL", f"bf16 requested but {torch.cuda.get_device_name(dev)} has no bf16")
    report.facts["device"] = str(dev) if dev is not None else None
    report.facts["precision"] = cfg.distributed.precision
    check_dali(report, dev if dev is not None else torch.device("cpu"), cfg.data.reader)
    if cfg.distributed.backend == "deepspeed":
        try:
            import deepspeed

            report.add(
                "deepspeed",
                "ok",
                f"imports ({deepspeed.__version__}); backend deepspeed, ZeRO {cfg.distributed.zero_stage}",
            )
        except Exception as exc:
            report.add("deepspeed", "FAIL", f"distributed.backend=deepspeed but DeepSpeed does not import: {exc}")
    flush()
    if steps and dev is not None:
        b = batch or (cfg.data.batch_size_per_rank if dev.type == "cuda" else min(cfg.data.batch_size_per_rank, 16))
        _check_steps(report, cfg, dev, b)
    elif steps:
        report.add("steps", "info", "skipped: no usable device")
    report.facts["seconds"] = round(time.perf_counter() - start, 2)
    flush()
    return report
