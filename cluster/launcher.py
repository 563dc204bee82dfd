"""Submitting training runs: validate everything that can be validated before
anything is queued, build the submitit executor from a cluster profile, submit
one job or a job array, and keep a record of every job in the run directory.

Layout of a launched run: `<out>/<name>/` is the trainer's run directory
(config.yaml, checkpoints/, tb/, metrics.jsonl, result.json) plus `jobs.jsonl`
(one line per submission: job id, where its logs are) and `logs/` (submitit's
`<jobid>_<task>_log.out/.err`, submission script and pickles).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from bioscale.cluster import slurm_jobs
from bioscale.cluster.profile import ClusterProfile
from bioscale.cluster.training_job import TrainingJob
from bioscale.training.config import ConfigError, ExperimentConfig, load_config

JOBS_FILE = "jobs.jsonl"


class SubmissionError(RuntimeError):
    """SLURM (sbatch) refused the job; the message carries SLURM's own words."""


# ------------------------------------------------------------ before submission


def build_config(config_path: str | None, overrides: Sequence[str], data: str, run_dir: Path) -> ExperimentConfig:
    """The merged config of one run, checked as far as possible on this node
    (raises ConfigError): types and ranges, the rule's own checks, the
    architecture, and the data splits the run will read."""
    cfg = load_config(config_path, [*overrides, f"data.path={data}", f"out={run_dir}"])
    check_experiment(cfg)
    return cfg


def check_experiment(cfg: ExperimentConfig) -> None:
    from bioscale.algorithms import build_rule
    from bioscale.data_pipeline import DataError, open_split
    from bioscale.models.architectures import get_arch

    try:
        build_rule(cfg.algorithm)
        get_arch(cfg.model.arch)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if "val" not in cfg.train.eval_splits:
        raise ConfigError(
            "config: train.eval_splits must include val: model selection (result.json) and "
            "sweep ranking read the validation error"
        )
    root = Path(cfg.data.path)
    for split in ("train", *cfg.train.eval_splits):
        try:
            open_split(root / split)
        except (DataError, OSError) as exc:
            raise ConfigError(f"data: {exc}") from None


# ------------------------------------------------------------------ executors


def make_executor(
    log_dir: Path, profile: ClusterProfile, *, local: bool, job_name: str, max_parallel: int | None = None
) -> submitit.AutoExecutor:
    """A submitit executor writing `%j` logs into `log_dir`; `local` runs the
    same job as local processes (no SLURM)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if local:
        ex = submitit.AutoExecutor(folder=log_dir, cluster="local")
        ex.update_parameters(
            name=job_name,
            timeout_min=profile.timeout_min,
            tasks_per_node=profile.tasks,
            nodes=1,
            gpus_per_node=profile.gpus_per_node,
        )
        return ex
    if not slurm_jobs.slurm_available():
        raise SubmissionError(
            "sbatch not found: this is not a SLURM login node (use --local to run here, or "
            "cluster/local_slurm.sh up for a single-node SLURM)"
        )
    ex = submitit.AutoExecutor(folder=log_dir, cluster="slurm", slurm_max_num_timeout=profile.max_num_timeout)
    params = profile.executor_parameters()
    if max_parallel:
        params["slurm_array_parallelism"] = max_parallel
    ex.update_parameters(name=job_name, **params)
    return ex


def submit(executor: submitit.AutoExecutor, jobs: Sequence[TrainingJob]) -> list[submitit.Job]:
    """Submit one job, or several as one job array; SLURM's refusal becomes a
    SubmissionError quoting sbatch."""
    try:
        # submitit also prints sbatch's stderr on failure; the error carries it once
        with contextlib.redirect_stderr(io.StringIO()):
            if len(jobs) == 1:
                return [executor.submit(jobs[0])]
            return list(executor.submit_array(list(jobs)))
    except (submitit.core.utils.FailedJobError, OSError) as exc:
        raise SubmissionError(_sbatch_words(str(exc))) from None


def _sbatch_words(text: str) -> str:
    """submitit wraps sbatch's stderr in its own message; keep sbatch's lines."""
    lines = [ln.strip() for ln in text.splitlines() if "sbatch:" in ln or "error" in ln.lower()]
    return "\n".join(dict.fromkeys(lines)) or text.strip()


# -------------------------------------------------------------- job records


def record_job(run_dir: Path, job_id: str, log_dir: Path, cluster: str, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "job_id": job_id,
        "cluster": cluster,
        "log_dir": str(log_dir),
        "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    with open(run_dir / JOBS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def job_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / JOBS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def active_job(run_dir: Path) -> str | None:
    """The id of a queued or running SLURM job of this run directory, if any:
    two jobs writing one run directory would interleave their checkpoints."""
    records = [r for r in job_records(run_dir) if r.get("cluster") == "slurm"]
    if not records:
        return None
    last = records[-1]["job_id"]
    return last if slurm_jobs.query([last])[last].active else None


# ------------------------------------------------------------------- launch


def launch(cfg: ExperimentConfig, profile: ClusterProfile, *, local: bool = False) -> submitit.Job:
    """Submit one validated run; returns the submitit job."""
    run_dir = Path(cfg.out)
    if not local:
        busy = active_job(run_dir)
        if busy:
            raise SubmissionError(
                f"{run_dir} is already being trained by job {busy}; wait for it or `scancel {busy}` first"
            )
    log_dir = run_dir / "logs"
    ex = make_executor(log_dir, profile, local=local, job_name=f"bioscale-{cfg.name}")
    (job,) = submit(ex, [TrainingJob(cfg.to_dict(), label=cfg.name)])
    record_job(run_dir, job.job_id, log_dir, "local" if local else "slurm", world_size=profile.world_size)
    return job


def wait_for(
    job_ids: Sequence[str], poll_s: float = 10.0, timeout_s: float | None = None
) -> dict[str, slurm_jobs.JobState]:
    """Poll SLURM until no job in `job_ids` is active (a requeued job counts as
    active). A job unknown to both squeue and sacct right after submission is
    waited for too, for a while."""
    start = time.monotonic()
    while True:
        states = slurm_jobs.query(job_ids)
        unknown_grace = time.monotonic() - start < 60
        if not any(s.active or (s.state == "UNKNOWN" and unknown_grace) for s in states.values()):
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(
                f"jobs still active after {timeout_s:.0f} s: "
                + ", ".join(f"{j} {s.state}" for j, s in states.items() if s.active)
            )
        time.sleep(poll_s)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
