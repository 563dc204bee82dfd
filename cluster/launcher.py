"""Submitting training runs: validate everything that can be validated before
anything is queued, submit through an executor (cluster/executors.py), and keep a
record of every job in the run directory.

Layout of a launched run: `<out>/<name>/` is the trainer's run directory
(config.yaml, checkpoints/, tb/, metrics.jsonl, result.json) plus `jobs.jsonl`
(one line per submission: job id, which executor, where its logs are) and `logs/`
(`<jobid>_<task>_log.out/.err`; for SLURM also submitit's submission script and pickles).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bioscale.cluster.executors import Executor, SubmissionError
from bioscale.cluster.profile import ClusterProfile
from bioscale.cluster.training_job import TrainingJob
from bioscale.training.config import ExperimentConfig
from bioscale.training.config_loader import load_config
from bioscale.training.preflight import check_experiment

JOBS_FILE = "jobs.jsonl"
__all__ = ["SubmissionError", "build_config", "launch", "launch_here", "record_job", "job_records", "active_job"]


# ------------------------------------------------------------ before submission
def build_config(config_path: str | None, overrides: Sequence[str], data: str, run_dir: Path) -> ExperimentConfig:
    """The merged config of one run, checked as far as possible on this node
    (raises ConfigError): types and ranges, the rule's own checks, the
    architecture, and the data splits the run will read."""
    cfg = load_config(config_path, [*overrides, f"data.path={data}", f"out={run_dir}"])
    check_experiment(cfg)
    return cfg


# -------------------------------------------------------------- job records
def record_job(run_dir: Path, job_id: str, executor: Executor, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "job_id": job_id,
        "cluster": executor.cluster,
        "log_dir": str(executor.folder),
        "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    with open(run_dir / JOBS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def job_records(run_dir: Path, cluster: str | None = None) -> list[dict[str, Any]]:
    """The run's submissions, oldest first (only `cluster`'s, when given)."""
    path = run_dir / JOBS_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if cluster is None or r.get("cluster") == cluster]


def active_job(run_dir: Path, executor: Executor) -> str | None:
    """The id of a queued or running job of this run directory on `executor`, if any:
    two jobs writing one run directory would interleave their checkpoints."""
    records = job_records(run_dir, executor.cluster)
    if not records:
        return None
    last = records[-1]["job_id"]
    return last if executor.query([last])[last].active else None


# ------------------------------------------------------------------- launch
def launch(cfg: ExperimentConfig, executor: Executor, **extra: Any) -> str:
    """Submit one validated run through `executor`; returns the job id."""
    run_dir = Path(cfg.out or "")
    busy = active_job(run_dir, executor)
    if busy:
        raise SubmissionError(
            f"{run_dir} is already being trained by job {busy}; wait for it"
            + (f" or `scancel {busy}` first" if executor.cluster == "slurm" else "")
        )
    (job_id,) = executor.submit([TrainingJob(cfg.to_dict(), label=cfg.name)], job_name=f"bioscale-{cfg.name}")
    record_job(run_dir, job_id, executor, **extra)
    return job_id


def launch_here(cfg: ExperimentConfig, profile: ClusterProfile) -> dict[str, Any]:
    """`bioscale launch --local`: the same job as the profile's tasks, as local processes
    (submitit's local cluster: it starts N tasks with a rendezvous, which the one-process
    pool of the local executor does not), waiting for its end. Returns rank 0's summary;
    raises the first task's failure."""
    import submitit

    run_dir = Path(cfg.out or "")
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=log_dir, cluster="local")
    ex.update_parameters(
        name=f"bioscale-{cfg.name}",
        timeout_min=profile.timeout_min,
        tasks_per_node=profile.tasks,
        nodes=1,
        gpus_per_node=profile.gpus_per_node,
    )
    with contextlib.redirect_stderr(io.StringIO()):
        job = ex.submit(TrainingJob(cfg.to_dict(), label=cfg.name))
    with open(run_dir / JOBS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"job_id": job.job_id, "cluster": "submitit-local", "log_dir": str(log_dir)}) + "\n")
    print(f"started job {job.job_id} here ({profile.tasks} task(s)); logs: {log_dir}", flush=True)
    return job.results()[0]
