"""`bioscale doctor`'s report and its checks of the software stack and the node: versions
(torch, its CUDA build, cuDNN, NCCL, the driver, DALI and its CUDA build, DeepSpeed), the GPUs
torch sees, whether DALI's CUDA build fits the driver, and the process environment. The
training-step checks and `run_checks` are `training/doctor.py`."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
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


def check_versions(report: Report) -> None:
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


def check_lc_kernels(report: Report) -> None:
    """Whether the LC layers' native CPU kernels built here (else the slower PyTorch ones run)."""
    from bioscale.models import lc_native

    built, detail = lc_native.describe()
    report.facts["lc_kernels"] = "native" if built else "torch"
    report.add("lc kernels", "ok" if built else "warn", f"native, {detail}" if built else f"PyTorch ({detail})")


def check_gpus(report: Report) -> list[dict[str, Any]]:
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


def check_dali(report: Report, device: torch.device, reader: str) -> None:
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


def check_environment(report: Report):
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
