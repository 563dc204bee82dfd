"""Where training jobs run: one interface, two engines, shared by sweeps, the paper
reproduction and `bioscale launch`.

- `SlurmExecutor`: SLURM through submitit (`sbatch`, job arrays throttled by
  `max_parallel`, requeue on preemption/time limit); states from squeue/sacct.
- `LocalExecutor`: a pool of `max_parallel` processes on this machine, no SLURM
  (`concurrent.futures.ProcessPoolExecutor`, spawned, one fresh process per job, each
  limited to `threads_per_job` torch threads). Our own code here is only what the pool
  lacks: a job's state must be readable by *another* process (`bioscale sweep status`,
  a re-run after the driver was killed), so each job writes its state to
  `<folder>/<job id>.state.json` (pending → running with its pid → completed/failed
  with its exit code). A pending or running job whose owner process is gone is LOST:
  it ended with the driver and is retried by the next run, like a failed job.

Both write a job's stdout/stderr to `<folder>/<job id>_0_log.out/.err` (submitit's
naming), so `log_tail` is the same for both. Exit codes of a job: 0 done, 2 config
error, 3 diverged (the run is marked diverged in its directory), 1 anything else.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeGuard

from bioscale.cluster import slurm_jobs
from bioscale.cluster.profile import ClusterProfile
from bioscale.cluster.slurm_jobs import LOST, JobState
from bioscale.cluster.training_job import TrainingJob, run_in_process
from bioscale.data_pipeline.atomic_files import atomic_write_text
from bioscale.data_pipeline.errors import UserError


class SubmissionError(UserError, RuntimeError):
    """The executor refused the job (SLURM's own words, or no SLURM here)."""


class Executor(ABC):
    cluster: str
    """'local' or 'slurm': recorded with every job in the run's jobs.jsonl."""
    capacity: int | None = None
    """Jobs that run at once (the local pool's size); None: the engine queues and throttles."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        """Logs (`<job id>_0_log.out/.err`) and, for local jobs, their state files."""

    @abstractmethod
    def submit(self, jobs: Sequence[TrainingJob], job_name: str) -> list[str]:
        """Queue the jobs (several as one array where the engine has arrays); their ids."""

    @abstractmethod
    def query(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The state of each job id (UNKNOWN / LOST for ids the engine does not know)."""

    @abstractmethod
    def cancel(self, job_ids: Iterable[str]) -> None: ...

    def log_tail(self, job_id: str, lines: int = 15) -> str:
        return slurm_jobs.tail(slurm_jobs.log_paths(self.folder, job_id)[1], lines)

    def wait(self, job_ids: Sequence[str], poll_s: float = 10.0, timeout_s: float | None = None) -> dict[str, JobState]:
        """Poll until no job is active (a requeued one counts as active). A job unknown
        right after submission (accounting lag) is waited for too, for a while."""
        start = time.monotonic()
        while True:
            states = self.query(job_ids)
            unknown_grace = time.monotonic() - start < 60
            if not any(s.active or (s.state == "UNKNOWN" and unknown_grace) for s in states.values()):
                return states
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                active = ", ".join(f"{j} {s.state}" for j, s in states.items() if s.active)
                raise TimeoutError(f"jobs still active after {timeout_s:.0f} s: {active}")
            time.sleep(poll_s)

    def shutdown(self) -> None:  # noqa: B027  (a no-op unless the engine holds something here)
        """Release what this process holds (the local pool: wait for its jobs)."""

    def describe(self) -> str:
        return self.cluster


# ------------------------------------------------------------------------ SLURM
class SlurmExecutor(Executor):
    cluster = "slurm"

    def __init__(self, folder: str | Path, profile: ClusterProfile, max_parallel: int | None = None):
        super().__init__(folder)
        if not slurm_jobs.slurm_available():
            raise SubmissionError(
                "sbatch not found: this is not a SLURM login node (use --local to run here, or "
                "cluster/local_slurm.sh up for a single-node SLURM)"
            )
        self.profile, self.max_parallel = profile, max_parallel

    def submit(self, jobs: Sequence[TrainingJob], job_name: str) -> list[str]:
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        ex = submitit.AutoExecutor(
            folder=self.folder, cluster="slurm", slurm_max_num_timeout=self.profile.max_num_timeout
        )
        params = self.profile.executor_parameters()
        if self.max_parallel:
            params["slurm_array_parallelism"] = self.max_parallel
        ex.update_parameters(name=job_name, **params)
        try:
            # submitit also prints sbatch's stderr on failure; the error carries it once
            with contextlib.redirect_stderr(io.StringIO()):
                submitted = [ex.submit(jobs[0])] if len(jobs) == 1 else list(ex.submit_array(list(jobs)))
        except (submitit.core.utils.FailedJobError, OSError) as exc:
            raise SubmissionError(_sbatch_words(str(exc))) from None
        return [job.job_id for job in submitted]

    def query(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        return slurm_jobs.query(job_ids)

    def cancel(self, job_ids: Iterable[str]) -> None:
        slurm_jobs.cancel(job_ids)

    def describe(self) -> str:
        return f"SLURM ({self.profile.describe()})"


def _sbatch_words(text: str) -> str:
    """submitit wraps sbatch's stderr in its own message; keep sbatch's lines."""
    lines = [ln.strip() for ln in text.splitlines() if "sbatch:" in ln or "error" in ln.lower()]
    return "\n".join(dict.fromkeys(lines)) or text.strip()


# ------------------------------------------------------------------------ local
class LocalExecutor(Executor):
    cluster = "local"

    def __init__(self, folder: str | Path, max_parallel: int = 1, threads_per_job: int | None = None):
        super().__init__(folder)
        if max_parallel < 1:
            raise ValueError(f"--max-parallel must be >= 1, got {max_parallel}")
        self.max_parallel = self.capacity = max_parallel
        self.threads_per_job = threads_per_job or max(1, (os.cpu_count() or 1) // max_parallel)
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._ids = itertools.count()

    def submit(self, jobs: Sequence[TrainingJob], job_name: str) -> list[str]:
        if self._pool is None:
            # spawn, one job per process: a fresh interpreter per run (no torch state,
            # threads or CUDA context carried from one run to the next)
            self._pool = ProcessPoolExecutor(self.max_parallel, mp_context=get_context("spawn"), max_tasks_per_child=1)
        self.folder.mkdir(parents=True, exist_ok=True)
        ids = []
        for job in jobs:
            job_id = f"local-{os.getpid()}-{time.time_ns() // 1000 % 10**10}-{next(self._ids)}"
            self._write_state(job_id, {"state": "PENDING", "owner": os.getpid(), "name": job_name})
            out, err = slurm_jobs.log_paths(self.folder, job_id)
            self._futures[job_id] = self._pool.submit(
                _pool_main, job, str(self._state_path(job_id)), str(out), str(err), self.threads_per_job
            )
            ids.append(job_id)
        return ids

    def query(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        states = {}
        for job_id in sorted(set(job_ids)):
            future = self._futures.get(job_id)
            if future is not None and future.done():
                # the worker writes its final state itself; a worker that died (OOM kill)
                # could not: its future carries the error
                exc = future.exception()
                if exc is not None and self._read_state(job_id).get("state") not in ("COMPLETED", "FAILED"):
                    self._write_state(job_id, {"state": "FAILED", "exit_code": "1:0", "error": str(exc)})
            states[job_id] = self._state_of(job_id)
        return states

    def _state_of(self, job_id: str) -> JobState:
        record = self._read_state(job_id)
        state = record.get("state", "UNKNOWN")
        if state == "PENDING" and not _alive(record.get("owner")):
            state = LOST
        elif state == "RUNNING" and not _alive(record.get("pid")):
            state = LOST
        return JobState(job_id, state, record.get("exit_code", ""))

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            future = self._futures.get(job_id)
            if future is not None and future.cancel():
                self._write_state(job_id, {"state": "CANCELLED"})
                continue
            pid = self._read_state(job_id).get("pid")
            if self._read_state(job_id).get("state") == "RUNNING" and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 15)  # SIGTERM: the run keeps its last checkpoint

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return f"local pool ({self.max_parallel} process(es) × {self.threads_per_job} thread(s))"

    def _state_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.state.json"

    def _read_state(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._state_path(job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write_state(self, job_id: str, record: dict[str, Any]) -> None:
        atomic_write_text(self._state_path(job_id), json.dumps(record) + "\n")


def _alive(pid: Any) -> TypeGuard[int]:
    """True if `pid` is an int naming a live (not zombie) process."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) has ended too
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _pool_main(job: TrainingJob, state_path: str, out: str, err: str, threads: int) -> int:
    """One job in a pool process: its output into the job's log files, its state into the
    state file, the run through the same entry point as every other job."""
    path = Path(state_path)
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(state="RUNNING", pid=os.getpid())
    atomic_write_text(path, json.dumps(record) + "\n")
    with open(out, "a", encoding="utf-8") as fout, open(err, "a", encoding="utf-8") as ferr:
        os.dup2(fout.fileno(), 1)
        os.dup2(ferr.fileno(), 2)
        try:
            code = run_in_process(job.config, job.label, threads=threads)
        except Exception:  # a bug, not a user error: its traceback goes to the job's log
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    record.update(state="COMPLETED" if code == 0 else "FAILED", exit_code=f"{code}:0")
    atomic_write_text(path, json.dumps(record) + "\n")
    return code


# ---------------------------------------------------------------------- factory
def make_executor(
    kind: str,
    folder: str | Path,
    *,
    profile: ClusterProfile | None = None,
    max_parallel: int | None = None,
    threads_per_job: int | None = None,
) -> Executor:
    """`kind` 'local' (a process pool here, `max_parallel` at a time, default 1) or 'slurm'
    (submitit with `profile`; `max_parallel` throttles arrays)."""
    if kind == "local":
        return LocalExecutor(folder, max_parallel or 1, threads_per_job)
    if kind == "slurm":
        if profile is None:
            raise ValueError("the SLURM executor needs a cluster profile")
        return SlurmExecutor(folder, profile, max_parallel)
    raise ValueError(f"unknown executor {kind!r}; expected local or slurm")
