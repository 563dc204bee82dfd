"""Bad input against the real local SLURM: an unknown partition surfaces
SLURM's own error; a config that fails validation (and bad data, a bad space)
is rejected before anything is queued; a trial that crashes (a corrupted
shard) or diverges shows its exit code and stderr tail in `sweep status`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.cluster_helpers import ROOT, bioscale, wait_until

pytestmark = pytest.mark.slurm


def _jobs_named(name: str) -> tuple[str, str]:
    """What squeue and sacct know of jobs called `name` (both must be empty)."""
    queued = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True, check=True).stdout
    accounted = subprocess.run(
        ["sacct", "-X", "-n", "-S", "now-6hours", "--name", name], capture_output=True, text=True, check=True
    ).stdout
    return queued.strip(), accounted.strip()


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{time.time_ns() % 10**9}"


def test_unknown_partition_shows_slurms_error(slurm, shards, fast_config, tmp_path):
    name = _unique("nopart")
    proc = bioscale(
        "launch",
        "--config",
        fast_config,
        "--data",
        shards,
        "--out",
        tmp_path,
        "--name",
        name,
        "--partition",
        "no_such_partition",
    )
    assert proc.returncode == 1
    assert "SLURM refused the job" in proc.stderr and "invalid partition" in proc.stderr.lower(), proc.stderr
    assert "partition=no_such_partition" in proc.stderr  # says which profile/override asked for it
    assert _jobs_named(f"bioscale-{name}") == ("", "")


@pytest.mark.parametrize(
    "override,message",
    [
        ("algorithm.alpha=0.1", "algorithm.alpha applies to rule 'dtp' only"),
        ("optim.forward.lr=-1", "optim.forward.lr = -1.0: must be > 0"),
        ("model.arch=resnet", "unknown architecture 'resnet'"),
        ("train.eval_splits=[test]", "train.eval_splits must include val"),
    ],
)
def test_invalid_config_is_rejected_before_submission(slurm, shards, fast_config, tmp_path, override, message):
    name = _unique("badcfg")
    proc = bioscale("launch", "--config", fast_config, "--data", shards, "--out", tmp_path, "--name", name, override)
    assert proc.returncode == 2 and message in proc.stderr and "nothing was submitted" in proc.stderr, proc.stderr
    assert _jobs_named(f"bioscale-{name}") == ("", "")
    assert not (tmp_path / name).exists()


def test_missing_data_and_bad_sweep_space_are_rejected_before_submission(slurm, shards, fast_config, tmp_path):
    name = _unique("baddata")
    proc = bioscale(
        "launch", "--config", fast_config, "--data", tmp_path / "nowhere", "--out", tmp_path, "--name", name
    )
    assert proc.returncode == 2 and "data:" in proc.stderr and "nowhere" in proc.stderr, proc.stderr
    # a space that gives an SDTP trial a DTP-only key: every trial fails validation, no sweep is created
    space = tmp_path / "space.yaml"
    space.write_text("algorithm.alpha: {uniform: [0.01, 0.2]}\n")
    sweep_name = _unique("badspace")
    proc = bioscale(
        "sweep",
        "--config",
        fast_config,
        "--data",
        shards,
        "--out",
        tmp_path / "sw",
        "--trials",
        "3",
        "--space",
        space,
        "--name",
        sweep_name,
    )
    assert proc.returncode == 2 and "trial 0 (algorithm.alpha=" in proc.stderr, proc.stderr
    assert "applies to rule 'dtp' only" in proc.stderr and "nothing was submitted" in proc.stderr
    assert not (tmp_path / "sw" / "sweep.json").exists()
    assert _jobs_named(f"bioscale-{name}") == ("", "") and _jobs_named(f"bioscale-sweep-{sweep_name}") == ("", "")


def _corrupt_copy(shards: Path, dest: Path) -> Path:
    """The same shards with the training shard's bytes scrambled, sizes kept:
    the pre-submission check (manifests, sizes) passes, reading fails."""
    shutil.copytree(shards, dest)
    for tar in (dest / "train").glob("*.tar"):
        data = bytearray(tar.read_bytes())
        data[::3] = bytes((b * 7 + 13) % 256 for b in data[::3])
        tar.write_bytes(bytes(data))
    return dest


def test_crashing_and_diverging_trials_show_exit_code_and_stderr_in_status(slurm, shards, fast_config, tmp_path):
    bad_data = _corrupt_copy(shards, tmp_path / "corrupt")
    space = tmp_path / "space.yaml"
    space.write_text("optim.forward.lr: {choice: [1.0e+37]}\noptim.inverse.lr: {choice: [1.0e+37]}\n")
    common = ["--config", fast_config, "--trials", "1", "--epochs", "1", "--poll-s", "1"]
    runs = {
        "crash": ["--data", bad_data, "--out", tmp_path / "crash", "--space", "paper"],
        "diverge": ["--data", shards, "--out", tmp_path / "diverge", "--space", space],
    }
    procs = {
        k: subprocess.Popen(
            [sys.executable, "-m", "bioscale", "sweep", *map(str, common + v)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for k, v in runs.items()
    }
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        # the crash leaves the sweep incomplete; a diverged trial is finished (never resubmitted)
        assert p.returncode == (1 if k == "crash" else 0), f"{k}: {out}\n{err}"

    def status(name: str, expected: str) -> str:  # accounting may lag the end of the job by a moment
        def shows() -> str | None:
            out = bioscale("sweep", "status", "--out", tmp_path / name, check=True).stdout
            return out if expected in out else None

        return wait_until(shows, 60, f"{expected!r} in `sweep status` of {name}", interval=1)

    crash = status("crash", "exit code 1:0")
    assert "1 failed" in crash and "stderr tail:" in crash and "DataError" in crash, crash
    diverge = status("diverge", "exit code 3:0")
    assert "1 diverged" in diverge and "diverged at step" in diverge, diverge
    assert "failed" in (tmp_path / "crash" / "report.md").read_text()
