"""The callable that submitit runs in every task of a training job, and the
requeue contract.

Requeue: on preemption or an approaching time limit SLURM sends USR2;
submitit's handler (global rank 0 only) calls `checkpoint()`, requeues the job
and exits. `checkpoint()` deliberately saves nothing: under multi-task jobs only
rank 0 runs it, in the middle of whatever step the signal interrupted, so it
cannot save a consistent distributed state. The trainer's own periodic
checkpoints (`train.checkpoint_every_steps`, atomic, with a `latest` marker)
plus its auto-resume from the run directory are the mechanism; a plain
`scontrol requeue`, which sends no USR2 and never calls `checkpoint()`,
resumes exactly the same way. The cost of a requeue is at most the steps since
the last periodic checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import submitit

from bioscale.data_pipeline.errors import UserError

log = logging.getLogger("bioscale.cluster")


class TrainingJob(submitit.helpers.Checkpointable):
    """Train one run: `config` is the merged, already validated experiment
    config as a dict (its `out` is the run directory). Storing the dict, not
    the YAML path, means a later edit of the YAML cannot change a queued or
    requeued job."""

    def __init__(self, config: dict[str, Any], label: str = ""):
        self.config = config
        self.label = label or config.get("name", "run")

    def __call__(self) -> dict[str, Any]:
        job_env = submitit.JobEnvironment()
        _main_process_handles_preemption()
        if job_env.cluster != "slurm" and job_env.num_tasks > 1:
            _export_local_rendezvous(job_env)
        _limit_threads()
        try:
            result = _train(self.config, self.label, str(job_env.job_id))
        except UserError as exc:
            # the exit codes of `bioscale train` (2 config, 3 divergence, 1 data...), so that
            # sacct and `bioscale sweep status` tell a diverged trial from a crash
            log.error("%s: %s: %s", self.label, type(exc).__name__, exc)
            logging.shutdown()
            sys.exit(exc.exit_code)
        _ignore_late_requeue_signals()
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # No weights here (see the module docstring): resubmit the same callable;
        # on restart the trainer resumes from the newest periodic checkpoint.
        from bioscale.training.checkpoint import resumable_step

        step = resumable_step(self.config["out"])  # the marker only, no weights
        marker = f"step {step}" if step is not None else "none yet (the run restarts from step 0)"
        log.warning(
            "%s: preempted or timed out; requeueing, will resume from the last periodic checkpoint, %s",
            self.label,
            marker,
        )
        return super().checkpoint(*args, **kwargs)


def _main_process_handles_preemption() -> None:
    """DataLoader workers are forked from this process and inherit submitit's
    USR2 handler, and SLURM signals every process of the step: each worker
    would checkpoint and call `scontrol requeue` too. Only the process that
    installed the handler acts on it."""
    handler = signal.getsignal(signal.SIGUSR2)
    if not callable(handler):
        return
    owner = os.getpid()

    def in_owner_only(signum, frame):
        if os.getpid() == owner:
            handler(signum, frame)

    signal.signal(signal.SIGUSR2, in_owner_only)


def _ignore_late_requeue_signals() -> None:
    """The run is finished: a USR2 from now on (a time limit or a preemption landing while
    submitit writes the result or Python shuts down) must neither requeue the job nor end
    it. Python restores the default action of its handled signals at shutdown, so a USR2
    in that window killed the finished job and SLURM recorded it FAILED (seen in
    tests/cluster/test_requeue.py under load); an ignored signal stays ignored."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _export_local_rendezvous(job_env: Any) -> None:
    """The local executor starts N processes without SLURM variables: give
    `distributed/` the env:// variables it reads for torchrun. All tasks share
    the job id (the local job's pid), hence the port."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(20000 + int(job_env.job_id) % 20000),
        RANK=str(job_env.global_rank),
        WORLD_SIZE=str(job_env.num_tasks),
        LOCAL_RANK=str(job_env.local_rank),
        LOCAL_WORLD_SIZE=str(job_env.num_tasks),
    )


def _limit_threads() -> None:
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS")
    if cpus and cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))


def _train(config: dict[str, Any], label: str, job_id: str) -> dict[str, Any]:
    from bioscale.distributed import read_environment, shutdown
    from bioscale.training.config_loader import config_from_dict
    from bioscale.training.entry import train_run

    env = read_environment()
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    if env.rank == 0:
        log.info(
            "%s: job %s, %d task(s), restart %d, run directory %s",
            label,
            job_id,
            env.world_size,
            env.restart_count,
            config["out"],
        )
    cfg = config_from_dict(config, source=f"{label} (submitted config)")
    result = train_run(cfg)
    shutdown()  # leave the process group cleanly so no rank exits under another's all-reduce
    keys = ("selected_epoch", "val_top1_err", "test_top1_err", "epochs_completed", "steps")
    return {k: result[k] for k in keys if k in result}


def run_in_process(config: dict[str, Any], label: str, threads: int) -> int:
    """Train one run in this (single, non-SLURM) process: the local pool's job body.
    Returns the exit code instead of exiting: the pool process is reused for nothing, but
    its future reports the code."""
    import torch

    torch.set_num_threads(threads)
    try:
        _train(config, label, f"pid {os.getpid()}")
    except UserError as exc:
        log.error("%s: %s: %s", label, type(exc).__name__, exc)
        return exc.exit_code
    return 0
