"""The local executor, no SLURM anywhere: `bioscale sweep --local` runs a pruned sweep on
Fashion-MNIST shards to completion as a pool of processes on this machine; the winners
continue from their checkpoints; a re-run submits nothing; a diverged trial counts as
finished and is never run again; a job whose driver died is LOST, not running forever; a
stage whose trial was killed is not decided on what it lacks, and a pruned trial stays pruned."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from bioscale.cluster.executors import LocalExecutor
from bioscale.cluster.launcher import job_records, record_job
from bioscale.cluster.sweep import PRUNING_FILE, Sweep
from tests.cluster.cluster_helpers import bioscale, result

SPACE = """\
optim.forward.lr: {log_uniform: [1.0e-4, 1.0e-2]}
optim.inverse.lr: {log_uniform: [1.0e-4, 1.0e-2]}
"""


@pytest.fixture(scope="module")
def local_sweep(shards, tmp_path_factory):
    from tests.cluster.conftest import FAST_CONFIG

    tmp = tmp_path_factory.mktemp("local_sweep")
    (tmp / "fast.yaml").write_text(FAST_CONFIG)
    (tmp / "space.yaml").write_text(SPACE)
    args = [
        "sweep", "--local", "--max-parallel", "2", "--config", tmp / "fast.yaml", "--data", shards,
        "--out", tmp / "sweep", "--trials", "4", "--space", tmp / "space.yaml", "--seed", "3",
        "--epochs", "2", "--prune-after-epochs", "1", "--keep", "1", "--poll-s", "0.5",
    ]  # fmt: skip
    first = bioscale(*args, check=True)
    return {"dir": tmp / "sweep", "args": args, "first": first}


def test_local_sweep_prunes_and_finishes_without_slurm(local_sweep):
    root = local_sweep["dir"]
    pruning = json.loads((root / "pruning.json").read_text())
    (winner,) = pruning["keep"]
    assert sorted(pruning["pruned"] + [winner]) == [0, 1, 2, 3]
    assert pruning["ranking"][0]["trial"] == winner  # the best validation error after epoch 1 continues
    for i in range(4):
        trial = root / "trials" / f"t{i:03d}"
        records = job_records(trial)
        assert records and all(r["cluster"] == "local" for r in records)
        assert result(trial)["epochs_completed"] == (2 if i == winner else 1)
    # the winner's second job resumed from its epoch-1 checkpoint instead of starting over
    winner_dir = root / "trials" / f"t{winner:03d}"
    assert [r["epochs"] for r in job_records(winner_dir)] == [1, 2]
    jobs = job_records(winner_dir)
    log = (root / "logs" / f"{jobs[1]['job_id']}_0_log.err").read_text()
    assert re.search(r"resumed \S+ at step 20 \(epoch 1\)", log), log
    assert result(winner_dir)["steps"] == 40
    steps = [json.loads(line)["step"] for line in (winner_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(5) == 1 and steps[-1] == 40, steps  # one curve, continued
    report = (root / "report.md").read_text()
    assert "1 finished" in report and "3 pruned" in report
    assert "local pool (2 process(es)" in local_sweep["first"].stdout


def test_rerunning_a_finished_local_sweep_submits_nothing(local_sweep):
    root = local_sweep["dir"]
    before = {i: len(job_records(root / "trials" / f"t{i:03d}")) for i in range(4)}
    again = bioscale(*local_sweep["args"], check=True)
    assert "submitted" not in again.stdout
    assert {i: len(job_records(root / "trials" / f"t{i:03d}")) for i in range(4)} == before
    status = bioscale("sweep", "status", "--out", root, check=True).stdout  # finds the local jobs by itself
    assert "1 finished" in status and "3 pruned" in status


def test_a_diverged_trial_counts_as_finished_and_is_not_resubmitted(shards, fast_config, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.forward.lr: {choice: [1.0e+37]}\noptim.inverse.lr: {choice: [1.0e+37]}\n")
    args = ["sweep", "--local", "--config", fast_config, "--data", shards, "--out", tmp_path / "sw",
            "--trials", "1", "--epochs", "1", "--space", space, "--poll-s", "0.5"]  # fmt: skip
    first = bioscale(*args)
    assert first.returncode == 0, first.stdout + first.stderr  # diverged = done: the sweep is complete
    assert "1 diverged" in first.stdout and "diverged at step" in first.stdout
    trial = tmp_path / "sw" / "trials" / "t000"
    assert (trial / "diverged.json").exists() and len(job_records(trial)) == 1
    again = bioscale(*args)
    assert again.returncode == 0 and len(job_records(trial)) == 1  # never run again


def test_a_job_whose_driver_died_is_lost(tmp_path):
    ex = LocalExecutor(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "j1.state.json").write_text(json.dumps({"state": "PENDING", "owner": pid}))
    (tmp_path / "j2.state.json").write_text(json.dumps({"state": "RUNNING", "pid": pid}))
    (tmp_path / "j3.state.json").write_text(json.dumps({"state": "FAILED", "exit_code": "3:0"}))
    states = ex.query(["j1", "j2", "j3", "j4"])
    assert {j: s.state for j, s in states.items()} == {"j1": "LOST", "j2": "LOST", "j3": "FAILED", "j4": "UNKNOWN"}
    assert not any(s.active for s in states.values()) and states["j1"].failed


def _lost_job(executor: LocalExecutor, run_dir, epochs: int) -> None:
    """A job record for `run_dir` whose driver is gone (a machine or session that stopped)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    job_id = f"local-{dead.stdout.strip()}-0-0"
    executor._write_state(job_id, {"state": "RUNNING", "owner": int(dead.stdout), "pid": int(dead.stdout)})
    record_job(run_dir, job_id, executor, epochs=epochs)


def test_a_stage_with_a_killed_trial_waits_and_a_pruned_trial_stays_pruned(local_sweep, tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(local_sweep["dir"], root)
    executor = LocalExecutor(root / "logs")
    winner = json.loads((root / PRUNING_FILE).read_text())["keep"][0]
    loser = next(i for i in range(4) if i != winner)

    # a pruned trial whose last job was lost before it wrote a result is never due again:
    # the decision is final
    (root / "trials" / f"t{loser:03d}" / "result.json").unlink()
    _lost_job(executor, root / "trials" / f"t{loser:03d}", epochs=1)
    sweep = Sweep.create_or_resume(root, None, executor)
    assert sweep.status()[loser].state == "pruned" and sweep.advance() == []

    # stage 1 undecided, one trial's job killed before its epoch-1 result: the driver that
    # already retried it once neither decides nor resubmits; the next driver retries it
    (root / PRUNING_FILE).unlink()
    sweep = Sweep.create_or_resume(root, None, executor)
    assert sweep.status()[loser].state == "lost"
    sweep.attempted.add((loser, 1))
    assert sweep.advance() == [] and not (root / PRUNING_FILE).exists()
    fresh = Sweep.create_or_resume(root, None, executor)
    assert [s.trial for s in fresh.status() if s.state == "lost"] == [loser]


def test_local_sweep_refuses_what_needs_slurm(shards, fast_config, tmp_path):
    common = ["sweep", "--local", "--config", fast_config, "--data", shards, "--out", tmp_path / "x", "--trials", "1"]
    no_wait = bioscale(*common, "--no-wait")
    assert no_wait.returncode == 2 and "--no-wait needs SLURM" in no_wait.stderr
    tasks = bioscale(*common, "--tasks-per-node", "2")
    assert tasks.returncode == 2 and "--tasks-per-node > 1 needs SLURM" in tasks.stderr
    assert not (tmp_path / "x" / "sweep.json").exists()
