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

import dataclasses
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bioscale.data_pipeline.errors import UserError

STATUSES = ("ok", "warn", "FAIL", "info")


class DoctorError(UserError, RuntimeError):
    """A doctor check failed: the message is the first failure's reason."""

    exit_code = 1


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12}  {self.detail}"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    """Machine-readable versions, GPUs, environment and per-rule step results (for --json)."""

    def add(self, name: str, status: str, detail: str) -> Check:
        assert status in STATUSES, status
        check = Check(name, status, detail)
        self.checks.append(check)
        return check

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    def reason(self) -> str:
        failures = self.failures
        if not failures:
            return ""
        first = failures[0]
        more = f" (and {len(failures) - 1} more failed checks above)" if len(failures) > 1 else ""
        return f"{first.name}: {first.detail}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failures,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            **self.facts,
        }


# --------------------------------------------------------------------------- versions


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def dali_builds() -> dict[str, str]:
    """Installed DALI wheels, {distribution name: version}, e.g. {"nvidia-dali-cuda130": "2.4.0"}."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if re.fullmatch(r"nvidia-dali-cuda\d+", name):
            found[name] = dist.version
    return found


def dali_cuda_major(dist_name: str) -> int:
    """nvidia-dali-cuda130 -> 13, nvidia-dali-cuda120 -> 12, nvidia-dali-cuda110 -> 11."""
    digits = re.fullmatch(r"nvidia-dali-cuda(\d+)", dist_name)
    assert digits is not None, dist_name
    return int(digits.group(1)) // 10


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed driver supports (what `nvidia-smi` shows as
    "CUDA Version"), from the CUDA driver API through torch; None without a usable driver."""
    if not torch.cuda.is_available():
        return None
    try:
        version = int(torch._C._cuda_getDriverVersion())  # type: ignore[attr-defined]  # e.g. 12040 = 12.4
    except Exception:
        return None
    return version // 1000, version % 1000 // 10


def _nvidia_smi() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            rows.append(dict(zip(("index", "name", "driver", "memory"), parts)))
    return rows


def _check_versions(report: Report) -> None:
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    nccl = None
    if torch.cuda.is_available():
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:
            nccl = None
    smi = _nvidia_smi()
    driver = smi[0]["driver"] if smi else None
    driver_cuda = driver_cuda_version()
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": cuda,
        "cudnn": cudnn,
        "nccl": nccl,
        "driver": driver,
        "driver_cuda": None if driver_cuda is None else f"{driver_cuda[0]}.{driver_cuda[1]}",
        "dali": dali_builds(),
        "deepspeed": _dist_version("deepspeed"),
        "webdataset": _dist_version("webdataset"),
        "submitit": _dist_version("submitit"),
    }
    report.facts["versions"] = versions
    report.add("python", "info", f"{versions['python']} ({platform.machine()}, {os.cpu_count()} CPUs)")
    report.add("torch", "ok", f"{torch.__version__} (CUDA build {cuda or 'none'}, cuDNN {cudnn or 'none'})")
    report.add(
        "driver",
        "info",
        f"{driver or 'no NVIDIA driver found'}"
        + (f", supports CUDA {versions['driver_cuda']}" if driver_cuda else "")
        + (f"; NCCL {nccl}" if nccl else ""),
    )
    report.add("deepspeed", "info", versions["deepspeed"] or "not installed (the `distributed` extra)")
    report.add("webdataset", "ok" if versions["webdataset"] else "warn", versions["webdataset"] or "not installed")


def _check_gpus(report: Report) -> list[dict[str, Any]]:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "bf16": bool(p.major >= 8),
                }
            )
    report.facts["gpus"] = gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        names = "; ".join(f"cuda:{g['index']} {g['name']} {g['memory_gib']} GiB sm_{g['capability']}" for g in gpus)
        report.add(
            "gpus", "ok", f"{len(gpus)} seen: {names}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
        )
    else:
        why = "torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA device"
        report.add("gpus", "info", f"none ({why}" + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible else "") + ")")
    return gpus


def _check_dali(report: Report, device: torch.device, reader: str) -> None:
    from bioscale.data_pipeline.readers import dali_problem

    builds = dali_builds()
    # With reader=auto a DALI that cannot serve the device costs GPU decoding, not the run:
    # the reader falls back to WebDataset. With reader=dali the run would fail.
    severity = "FAIL" if reader == "dali" else "warn"
    if not builds:
        status = "FAIL" if reader == "dali" else "info"
        report.add("dali", status, "not installed (extras gpu-cu13 / gpu-cu12); reader=auto uses WebDataset")
        return
    if len(builds) > 1:
        report.add("dali", "FAIL", f"two DALI builds installed ({', '.join(sorted(builds))}): keep one")
        return
    ((name, version),) = builds.items()
    major = dali_cuda_major(name)
    driver_cuda = driver_cuda_version()
    problem = dali_problem(device)
    detail = f"{name} {version} (CUDA {major} build)"
    if device.type != "cuda":
        if problem:
            report.add("dali", severity, f"{detail}: {problem}")
        else:
            report.add("dali", "ok", f"{detail}: CPU pipelines (device cpu)")
        return
    fallback = "; data.reader=auto falls back to WebDataset" if reader == "auto" else ""
    if driver_cuda is not None and driver_cuda[0] < major:
        extra = "gpu-cu12" if driver_cuda[0] == 12 else f"a DALI build for CUDA {driver_cuda[0]}"
        report.add(
            "dali",
            severity,
            f"{detail} needs a CUDA {major} driver; this driver supports CUDA {driver_cuda[0]}.{driver_cuda[1]}: "
            f"install {extra} instead (pip uninstall {name}){fallback}",
        )
        return
    if problem:
        report.add("dali", severity, f"{detail}: {problem}{fallback}")
        return
    report.add(
        "dali",
        "ok",
        f"{detail}: opens {device}, driver CUDA {driver_cuda[0]}.{driver_cuda[1]}"
        if driver_cuda
        else f"{detail}: opens {device}",
    )


def _check_environment(report: Report):
    from bioscale.distributed import read_environment

    try:
        env = read_environment()
    except UserError as exc:
        report.add("environment", "FAIL", str(exc))
        return None
    report.facts["environment"] = dataclasses.asdict(env)
    where = (
        f"launcher {env.launcher}, rank {env.rank}/{env.world_size}, local rank {env.local_rank}/{env.local_world_size}"
    )
    if env.world_size > 1:
        where += f", node {env.node_rank}/{env.num_nodes}, rendezvous {env.master_addr}:{env.master_port}"
    if env.slurm_job_id:
        where += f", SLURM job {env.slurm_job_id}" + (f" (requeued {env.restart_count}x)" if env.restart_count else "")
    report.add("environment", "ok", where)
    return env


# --------------------------------------------------------------------------- one step of every rule


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
    _check_versions(report)
    _check_gpus(report)
    env = _check_environment(report)
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
    _check_dali(report, dev if dev is not None else torch.device("cpu"), cfg.data.reader)
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
