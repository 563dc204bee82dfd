"""`bioscale launch` against the real local SLURM: a training job writes its
result.json; a 2-task job trains with gloo across both tasks exactly like one
process with the same global batch (run with `--local`, no SLURM)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.cluster.cluster_helpers import bioscale, result, sacct_runs, submitted_job_id, wait_until

pytestmark = pytest.mark.slurm


def test_launch_trains_and_writes_result(slurm, shards, fast_config, tmp_path):
    proc = bioscale(
        "launch",
        "--config",
        fast_config,
        "--data",
        shards,
        "--out",
        tmp_path,
        "--name",
        "one",
        "--wait",
        "--poll-s",
        "1",
        check=True,
    )
    job = submitted_job_id(proc.stdout)
    run = tmp_path / "one"
    res = result(run)
    assert res["epochs_completed"] == 2 and res["world_size"] == 1 and res["name"] == "one"
    assert 0.0 <= res["test_top1_err"] < 0.9
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["test_top1_err"] == res["test_top1_err"]
    # %j logs in the run directory, the job recorded, SLURM's accounting agrees
    assert (run / "logs" / f"{job}_0_log.err").exists() and (run / "logs" / f"{job}_submission.sh").exists()
    assert "run directory" in (run / "logs" / f"{job}_0_log.err").read_text()
    record = json.loads((run / "jobs.jsonl").read_text().splitlines()[-1])
    assert record["job_id"] == job and record["cluster"] == "slurm"
    wait_until(lambda: sacct_runs(job) == [("COMPLETED", "0:0")], 30, f"accounting of job {job}", interval=0.5)
    script = (run / "logs" / f"{job}_submission.sh").read_text()
    assert "--partition=debug" in script and "--requeue" in script and "--signal=USR2@30" in script


def test_a_run_directory_being_trained_is_not_launched_twice(slurm, shards, fast_config, tmp_path):
    args = ["launch", "--config", fast_config, "--data", shards, "--out", tmp_path, "--name", "busy"]
    job = submitted_job_id(bioscale(*args, check=True).stdout)
    try:
        again = bioscale(*args)
        assert again.returncode == 1 and f"already being trained by job {job}" in again.stderr, again.stderr
        assert len((tmp_path / "busy" / "jobs.jsonl").read_text().splitlines()) == 1
    finally:
        subprocess.run(["scancel", job], check=True)


def _final_weights(run):
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    return torch.load(ckpts[-1], weights_only=False)["model"]


def test_two_task_job_matches_one_process_with_the_global_batch(slurm, shards, fast_config, tmp_path):
    # float64 and BP: Adam turns float32 summation-order noise into visible
    # weight differences within a few steps, which would hide a real mismatch.
    common = ["--config", fast_config, "--data", shards, "--out", tmp_path]
    overrides = ["algorithm.rule=bp", "model.dtype=float64", "train.eval_splits=[val]"]
    two = bioscale(
        "launch",
        *common,
        "--name",
        "two",
        "--tasks-per-node",
        "2",
        *overrides,
        "data.batch_size_per_rank=16",
        check=True,
    )
    job = submitted_job_id(two.stdout)
    # meanwhile the same training as one local process (no SLURM) with batch 32
    bioscale("launch", *common, "--name", "one", "--local", *overrides, "data.batch_size_per_rank=32", check=True)
    wait_until(
        lambda: sacct_runs(job) and sacct_runs(job)[-1][0] not in ("PENDING", "RUNNING"),
        300,
        f"job {job} to end",
        interval=1,
    )
    assert sacct_runs(job)[-1] == ("COMPLETED", "0:0"), (tmp_path / "two" / "logs" / f"{job}_0_log.err").read_text()
    rank1_log = (tmp_path / "two" / "logs" / f"{job}_1_log.err").read_text()
    assert "Job completed successfully" in rank1_log
    rank0_log = (tmp_path / "two" / "logs" / f"{job}_0_log.err").read_text()
    assert "global batch 32 (16 × 2 ranks)" in rank0_log and "2 task(s)" in rank0_log
    assert result(tmp_path / "two")["world_size"] == 2 and result(tmp_path / "one")["world_size"] == 1
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"
    # the loss curve: per-epoch training loss and errors, summed over all ranks
    # (per-step train/loss is rank 0's own half batch, so not comparable)
    h1, h2 = result(tmp_path / "one")["history"], result(tmp_path / "two")["history"]
    assert len(h1) == len(h2) == 2
    for e1, e2 in zip(h1, h2):
        assert e1["train_top1_err"] == e2["train_top1_err"] and e1["val_top1_err"] == e2["val_top1_err"]
        assert abs(e1["train_loss"] - e2["train_loss"]) <= 1e-9 * abs(e1["train_loss"]), (e1, e2)
