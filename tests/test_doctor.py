"""`bioscale doctor` on this CPU machine: every check passes with --device cpu and every
learning rule's step is listed; --device cuda (no GPU here) exits 1 with the reason in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bioscale.algorithms import RULES


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bioscale", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_plain_environment(), "OMP_NUM_THREADS": "1"},
    )


# What the process-environment reader takes as a launcher; an earlier test in the same
# pytest process may have left some set, and doctor would then report that launcher.
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_", "PMIX_")
LAUNCHER_NAMES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}


def _plain_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_NAMES and not k.startswith(LAUNCHER_PREFIXES)}


def test_doctor_cpu_checks_every_rule():
    proc = _doctor("--device", "cpu", "--batch", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["ok"] and report["device"] == "cpu"
    assert report["gpus"] == []  # reports no GPU ...
    assert set(report["steps"]) == set(RULES)  # ... and still checks one CPU step of every rule
    assert all(r["ok"] for r in report["steps"].values())
    for rule in RULES:
        assert any(line.startswith("ok") and f"step {rule} " in line for line in lines), rule
    assert report["versions"]["torch"] and report["environment"]["launcher"] == "single"
    assert report["lc_kernels"] == "native"  # g++ is installed here: the LC layers' native kernels built
    assert any(line.startswith("ok") and "lc kernels" in line and ".so" in line for line in lines)
    assert "all checks passed" in proc.stdout


def test_doctor_bf16_checks_the_signals_survive():
    """precision=bf16 (CPU autocast here): every rule's boundary signals are compared with
    the float32 ones; DTP's vanished in bf16 before its differences were formed in float32."""
    proc = _doctor("--device", "cpu", "--batch", "4", "--json", "distributed.precision=bf16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["precision"] == "bf16"
    cosines = {rule: r["bf16_signal_cosine"] for rule, r in report["steps"].items()}
    assert set(cosines) == set(RULES) and all(c > 0.99 for c in cosines.values()), cosines


def test_doctor_cuda_without_gpu_fails_in_one_line():
    proc = _doctor("--device", "cuda", "--no-steps")
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("bioscale doctor: device: ") and "no CUDA device" in err[0]
    assert "Traceback" not in proc.stderr


def test_step_failure_is_reported_with_its_reason(monkeypatch):
    """A rule whose step produces NaN: its check fails naming the non-finite quantity."""
    import torch

    from bioscale.training import doctor

    real = doctor.step_once

    def poisoned(cfg, rule, device, batch):
        if rule == "fa":
            raise RuntimeError("layer 2: the signal arriving at h_2 holds NaN/inf")
        return real(cfg, rule, device, batch)

    monkeypatch.setattr(doctor, "step_once", poisoned)
    torch.manual_seed(0)
    report = doctor.run_checks(None, ["model.arch=iclr_mnist_fc"], device="cpu", batch=2)
    assert [c.name for c in report.failures] == ["step fa"]
    assert report.reason() == "step fa: layer 2: the signal arriving at h_2 holds NaN/inf"
    assert report.facts["steps"]["bp"]["ok"]


@pytest.mark.parametrize("name,major", [("nvidia-dali-cuda130", 13), ("nvidia-dali-cuda120", 12)])
def test_dali_build_major(name, major):
    from bioscale.training.doctor_stack import dali_cuda_major

    assert dali_cuda_major(name) == major
