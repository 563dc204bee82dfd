"""The requeue contract of the job callable, without SLURM: `checkpoint()`
resubmits the same callable and writes nothing (the trainer's periodic
checkpoints are what a requeue resumes from), forked DataLoader workers
leave the USR2 handler to the process that installed it, and a USR2 after the run
finished ends nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bioscale.cluster.training_job import TrainingJob, _main_process_handles_preemption

# A process with submitit's kind of USR2 handler (requeue, then exit) that finishes its
# work and then, while shutting down, receives USR2 (SLURM's time-limit warning).
LATE_SIGNAL = """
import atexit, os, signal, sys
from bioscale.cluster.training_job import _ignore_late_requeue_signals
signal.signal(signal.SIGUSR2, lambda signum, frame: os._exit(7))  # "requeued, exiting"
if sys.argv[1] == "finished":
    _ignore_late_requeue_signals()
atexit.register(lambda: os.kill(os.getpid(), signal.SIGUSR2))
"""


def test_checkpoint_resubmits_the_same_job_and_saves_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    before = sorted(p.name for p in run.rglob("*"))
    job = TrainingJob({"out": str(run), "name": "x"}, label="x")
    delayed = job.checkpoint()
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}
    assert sorted(p.name for p in run.rglob("*")) == before


def test_forked_workers_leave_preemption_to_the_main_process():
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(os.getpid()))
    try:
        _main_process_handles_preemption()
        pid = os.fork()
        if pid == 0:  # a DataLoader worker forked from the training process
            os.kill(os.getpid(), signal.SIGUSR2)
            os._exit(0 if not calls else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the forked child ran the handler"
        os.kill(os.getpid(), signal.SIGUSR2)
        assert calls == [os.getpid()]
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("finished, code", [("finished", 0), ("running", 7)])
def test_a_usr2_after_the_run_finished_neither_requeues_nor_fails_the_job(finished, code):
    proc = subprocess.run([sys.executable, "-c", LATE_SIGNAL, finished], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr


def test_the_job_ignores_usr2_once_its_run_returned(monkeypatch):
    from bioscale.cluster import training_job

    env = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1", "SUBMITIT_LOCAL_NTASKS": "1"}
    env.update(SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_GLOBALID="0")
    for key, value in {**env, "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)
    seen = []

    def fake_train(config, label, job_id):  # the run itself; the signal is still handled here
        seen.append(signal.getsignal(signal.SIGUSR2))
        return {"status": "ok"}

    monkeypatch.setattr(training_job, "_train", fake_train)
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        assert TrainingJob({"out": "unused", "name": "x"})() == {"status": "ok"}
        assert seen and seen[0] is not signal.SIG_IGN
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)
