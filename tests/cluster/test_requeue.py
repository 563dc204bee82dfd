"""Requeue against the real local SLURM: a job preempted with USR2
(`scancel --signal=USR2`), one hitting a real time limit, and one requeued by
`scontrol requeue` (no signal at all) each come back, resume from the trainer's
last periodic checkpoint mid-epoch and end with exactly the metrics of an
uninterrupted run of the same config.

All five jobs are submitted at once by one fixture (2 CPUs run two at a time;
requeued jobs wait ~11 s for their credential to expire), which also sends the
signals while the jobs run; the tests then check the outcomes. Training lengths
are sized from this machine's measured speed: the time-limit job must still be
training when SLURM's 30-s limit check sends USR2 (up to ~35 s after start)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.cluster_helpers import latest_checkpoint_step, result, sacct_runs, submitted_job_id, wait_until

pytestmark = pytest.mark.slurm
STEPS_PER_EPOCH = 31  # 1000 training images, batch 32
COMMON = ["train.max_steps_per_epoch=null", "train.log_every_steps=5"]


def seconds_per_epoch(shards, config, tmp_path: Path) -> float:
    """This machine's time for one epoch of `config` (training and evaluation),
    measured with a short local run between its two epoch ends."""
    out = tmp_path / "speed"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bioscale",
            "train",
            "--config",
            str(config),
            "--data",
            str(shards),
            "--out",
            str(out),
            "--epochs",
            "2",
            *COMMON,
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    ends = [r["time"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val/top1_err" in r]
    return max(ends[1] - ends[0], 0.05)


class Jobs:
    def __init__(self, tmp: Path, shards, config, epoch_s: float):
        self.tmp, self.shards, self.config = tmp, shards, config
        # ~10 s of training: `scontrol requeue` kills after KillWait (5 s), the job must outlive that
        self.short_epochs = max(4, math.ceil(10 / epoch_s))
        # Long enough that SLURM's first limit check (<= 30 s after start) finds it training.
        self.long_epochs = max(8, math.ceil(36 / epoch_s))
        self.ids: dict[str, str] = {}

    def submit(self, specs: dict[str, tuple]) -> None:
        """Submit through the CLI (several in parallel: job ids, i.e. priorities, in any order)."""
        procs = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bioscale",
                    "launch",
                    "--config",
                    str(self.config),
                    "--data",
                    str(self.shards),
                    "--out",
                    str(self.tmp),
                    "--name",
                    name,
                    "--epochs",
                    str(epochs),
                    *map(str, options),
                    *COMMON,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (epochs, *options) in specs.items()
        }
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"launch {name}: {err}"
            self.ids[name] = submitted_job_id(out)

    def signal_when_training(self, commands: dict[str, list[str]]) -> dict[str, int]:
        """Send each job its command as soon as it has written a checkpoint."""
        sent: dict[str, int] = {}

        def poll():
            for name, command in commands.items():
                step = latest_checkpoint_step(self.tmp / name)
                if name not in sent and step > 0:
                    subprocess.run([*command, self.ids[name]], check=True, capture_output=True)
                    sent[name] = step
            return len(sent) == len(commands)

        wait_until(poll, 300, f"checkpoints of {', '.join(commands)}", interval=0.05)
        return sent

    def finished(self, name: str) -> list[tuple[str, str]]:
        job = self.ids[name]
        runs = wait_until(
            lambda: (r := sacct_runs(job)) and r[-1][0] not in ("PENDING", "RUNNING", "REQUEUED") and r,
            400,
            f"job {job} ({name}) to end",
            interval=1,
        )
        return runs

    def log(self, name: str) -> str:
        return (self.tmp / name / "logs" / f"{self.ids[name]}_0_log.err").read_text()


@pytest.fixture(scope="module")
def jobs(slurm, shards, tmp_path_factory):
    from tests.cluster.conftest import FAST_CONFIG

    tmp = tmp_path_factory.mktemp("requeue")
    config = tmp / "fast.yaml"
    config.write_text(FAST_CONFIG)
    j = Jobs(tmp, shards, config, seconds_per_epoch(shards, config, tmp))
    # The time-limit job: SLURM sends USR2 at its first 30-s limit check at
    # which <= 55 + 30 s are left of the 1-minute limit, i.e. the first check
    # after the start; every requeue gets a new minute (and a new USR2).
    # Submission order is SLURM's priority order (FIFO, requeued jobs keep
    # theirs). The time-limit job goes first: its requeue cycles are bound to
    # SLURM's 30-s limit checks, so it is the critical path.
    j.submit({"timelimit": (j.long_epochs, "--timeout-min", 1, "--signal-delay-s", 55, "--max-num-timeout", 10)})
    j.submit({"usr2": (j.short_epochs,)})
    j.submit({"scontrol": (j.short_epochs,)})
    j.signalled_at = j.signal_when_training({"usr2": ["scancel", "--signal=USR2"], "scontrol": ["scontrol", "requeue"]})
    j.submit({"reference": (j.short_epochs,)})
    j.submit({"timelimit_reference": (j.long_epochs,)})
    return j


def _resumed_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"resumed \S+ at step (\d+)", log)]


def _same_final_metrics(run: Path, reference: Path) -> None:
    a, b = result(run), result(reference)
    for key in ("selected_epoch", "val_top1_err", "test_top1_err", "epochs_completed", "steps"):
        assert a[key] == b[key], f"{key}: interrupted run {a[key]}, uninterrupted {b[key]}"
    assert a["history"] == b["history"], "the interrupted run's per-epoch metrics differ from the uninterrupted run's"


def test_usr2_preemption_requeues_and_resumes_from_the_last_checkpoint(jobs):
    runs = jobs.finished("usr2")
    jobs.finished("reference")
    assert [s for s, _ in runs] == ["REQUEUED", "COMPLETED"], runs
    log = jobs.log("usr2")
    assert "this job is preempted" in log and "will resume from the last periodic checkpoint" in log
    resumed = _resumed_steps(log)
    total = jobs.short_epochs * STEPS_PER_EPOCH
    assert len(resumed) == 1 and jobs.signalled_at["usr2"] <= resumed[0] < total, (resumed, log)
    _same_final_metrics(jobs.tmp / "usr2", jobs.tmp / "reference")


def test_scontrol_requeue_resumes_without_any_signal(jobs):
    runs = jobs.finished("scontrol")
    jobs.finished("reference")
    assert [s for s, _ in runs] == ["REQUEUED", "COMPLETED"], runs
    log = jobs.log("scontrol")
    assert "Calling checkpoint method" not in log  # no USR2: checkpoint() never ran
    resumed = _resumed_steps(log)
    assert len(resumed) == 1 and 0 < resumed[0] < jobs.short_epochs * STEPS_PER_EPOCH, (resumed, log)
    _same_final_metrics(jobs.tmp / "scontrol", jobs.tmp / "reference")


def test_time_limit_requeues_until_done(jobs):
    runs = jobs.finished("timelimit")
    jobs.finished("timelimit_reference")
    log = jobs.log("timelimit")
    # on failure, show how the last run ended (its stderr), not only SLURM's states
    assert runs[-1] == ("COMPLETED", "0:0") and runs[0][0] == "REQUEUED", (runs, log[-3000:])
    assert "this job is timed-out" in log and "remaining timeouts" in log
    resumed = _resumed_steps(log)
    # a requeued run signalled again before it got to resume logs no "resumed" line
    assert 1 <= len(resumed) <= len(runs) - 1 and resumed == sorted(resumed) and resumed[0] > 0, (resumed, runs)
    _same_final_metrics(jobs.tmp / "timelimit", jobs.tmp / "timelimit_reference")
