"""What SLURM says about our jobs: state, exit code, the stderr tail of their
logs, and cancelling them.

Two sources, because each misses something: `squeue` knows live jobs at once
but forgets finished ones after MinJobAge; `sacct` (accounting) remembers
finished jobs with their exit codes but lags a few seconds behind, and shows a
not-yet-started array as one `123_[2-5%2]` line. The live view wins where both
answer. A cluster without accounting still gets live states from squeue.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bioscale.data_pipeline.errors import UserError

LOST = "LOST"
"""Not SLURM's: a job of the local pool whose owner process ended before the job did."""
# States after which the job will not run again by itself.
FINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", LOST,
}  # fmt: skip
FAILED = FINAL - {"COMPLETED"}


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    """SLURM's state word (PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, ...), UNKNOWN if neither source knows."""
    exit_code: str = ""
    """sacct's `code:signal`, e.g. '1:0' for a Python exception, '0:9' for SIGKILL."""
    reason: str = ""
    """squeue's reason for a pending job (Resources, JobArrayTaskLimit, BeginTime, ...)."""

    @property
    def active(self) -> bool:
        """Queued, running or about to run again (a requeue passes through REQUEUED)."""
        return self.state != "UNKNOWN" and self.state not in FINAL

    @property
    def failed(self) -> bool:
        return self.state in FAILED


class SlurmError(UserError, RuntimeError):
    """A SLURM command failed; the message holds its own error text."""


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(
            f"{cmd[0]} not found: is this a SLURM login node? (cluster/local_slurm.sh up "
            f"starts a single-node SLURM here)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(cmd)} did not answer within {timeout:.0f} s (slurmctld down?)") from None


def _expand(job_field: str) -> list[str]:
    """'123' -> ['123']; '123_4' -> ['123_4']; '123_[2-4,7%2]' -> ['123_2', '123_3', '123_4', '123_7']."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_field)
    if not m:
        return [job_field]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def _raw_ids(job_ids: Iterable[str]) -> list[str]:
    return sorted({j.split("_")[0] for j in job_ids}, key=int)


def query(job_ids: Iterable[str]) -> dict[str, JobState]:
    """The current state of each job id (plain or `array_task`)."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    raw = ",".join(_raw_ids(wanted))
    states: dict[str, JobState] = {}
    acct = _run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,ExitCode", "-j", raw])
    if acct.returncode == 0:
        for line in acct.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 3:
                continue
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # 'CANCELLED by 0'
            for jid in _expand(parts[0]):
                states[jid] = JobState(jid, state, parts[2])
    live = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", raw])
    if live.returncode == 0:
        for line in live.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                old = states.get(parts[0])
                states[parts[0]] = JobState(parts[0], parts[1], old.exit_code if old else "", parts[2])
    elif "Invalid job id" not in live.stderr and acct.returncode != 0:
        raise SlurmError(f"cannot read job states: sacct: {acct.stderr.strip()} squeue: {live.stderr.strip()}")
    return {j: states.get(j, JobState(j, "UNKNOWN")) for j in wanted}


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        proc = _run(["scancel", *ids])
        if proc.returncode != 0:
            raise SlurmError(f"scancel {' '.join(ids)}: {proc.stderr.strip()}")


def log_paths(log_dir: str | Path, job_id: str, task: int = 0) -> tuple[Path, Path]:
    """submitit's stdout/stderr files of one task of a job (arrays: `<array>_<index>`)."""
    base = Path(log_dir) / f"{job_id}_{task}_log"
    return base.with_suffix(".out"), base.with_suffix(".err")


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file ('' if it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
