"""Helpers of the cluster tests: the real CLI, sacct, waiting on files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bioscale(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOSCALE_PROFILE": "local"}
    proc = subprocess.run(
        [sys.executable, "-m", "bioscale", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bioscale {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def submitted_job_id(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("submitted job "):
            return line.split()[2]
    raise AssertionError(f"no 'submitted job' line in:\n{stdout}")


def sacct_runs(job_id: str) -> list[tuple[str, str]]:
    """Every run of a job (requeues included, `sacct -D`): (state, exit code)."""
    out = subprocess.run(
        ["sacct", "-D", "-X", "-P", "-n", "-o", "JobID,State,ExitCode", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(p[1].split()[0], p[2]) for p in (line.split("|") for line in out.splitlines()) if p[0] == job_id]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def latest_checkpoint_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "latest").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())
