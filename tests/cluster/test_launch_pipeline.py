"""`bioscale launch ... --tasks-per-node 2 distributed.backend=pipeline distributed.stages=2`
trains a 2-stage pipeline into the usual run directory, with `--local` (submitit's local
cluster starts the two tasks) and on the real local SLURM, where a USR2 preemption
requeues it and the requeued job resumes every stage to the uninterrupted history; a
layout the stages do not divide is refused before anything is submitted."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from bioscale.training.config import ConfigError
from bioscale.training.config_loader import load_config
from bioscale.training.preflight import check_layout
from tests.cluster.cluster_helpers import (
    bioscale,
    latest_checkpoint_step,
    result,
    sacct_runs,
    submitted_job_id,
    wait_until,
)

PIPELINE = ["distributed.backend=pipeline", "distributed.stages=2"]


def test_a_layout_the_stages_do_not_divide_is_refused_before_submission(shards, fast_config, tmp_path):
    common = ["--config", fast_config, "--data", shards, "--out", tmp_path, "--local", "--tasks-per-node", "3"]
    bad = bioscale("launch", *common, "--name", "bad", *PIPELINE)
    assert bad.returncode == 2, bad.stderr
    assert "does not divide the world size 3" in bad.stderr and "nothing was submitted" in bad.stderr
    assert not (tmp_path / "bad" / "jobs.jsonl").exists()


@pytest.mark.slow  # the SLURM launch below trains the same pipeline (and preempts it)
def test_local_launch_of_a_two_stage_pipeline(shards, fast_config, tmp_path):
    common = ["--config", fast_config, "--data", shards, "--out", tmp_path, "--local", "--tasks-per-node", "2"]
    proc = bioscale("launch", *common, "--name", "pipe", *PIPELINE, check=True)
    assert "pipeline 2 stages × 1 replicas, stage-major" in proc.stdout
    run = tmp_path / "pipe"
    res = result(run)
    assert res["epochs_completed"] == 2 and res["world_size"] == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["val_top1_err"] == res["val_top1_err"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "stage0", "stage1"]
    assert (run / "metrics.jsonl").exists() and (run / "tb").is_dir()


def test_layout_is_stage_major():
    cfg = load_config(None, [*PIPELINE])
    assert check_layout(load_config(None, []), 4) is None  # other backends: nothing to place
    text = check_layout(cfg, 4, tasks_per_node=2)
    assert text is not None and "2 stages × 2 replicas" in text
    assert "stage 0: ranks 0-1 on node(s) [0]" in text and "stage 1: ranks 2-3 on node(s) [1]" in text
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        check_layout(cfg, 3)


@pytest.mark.slurm
def test_usr2_preemption_of_a_pipeline_job_resumes_every_stage(slurm, shards, fast_config, tmp_path):
    """float64, σ > 0: each stage restores its own noise RNG state, so the requeued run's
    history equals the uninterrupted one (up to the order of the all-reduced partial sums)."""
    common = ["--config", fast_config, "--data", shards, "--out", tmp_path, "--tasks-per-node", "2", "--epochs", "3"]
    longer = [*PIPELINE, "model.dtype=float64", "algorithm.sigma=0.05", "train.eval_splits=[val]"]
    job = submitted_job_id(bioscale("launch", *common, "--name", "pipe", *longer, check=True).stdout)
    run = tmp_path / "pipe"
    # as soon as every stage has saved a step (the run-level marker) and before the run ends
    step = wait_until(lambda: latest_checkpoint_step(run) > 0 and latest_checkpoint_step(run), 300, "a checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # meanwhile the uninterrupted reference: the same two tasks through submitit's local cluster
    bioscale("launch", *common, "--name", "reference", "--local", *longer, check=True)
    runs = wait_until(
        lambda: (r := sacct_runs(job)) and r[-1][0] not in ("PENDING", "RUNNING", "REQUEUED") and r,
        400,
        f"job {job} to end",
        interval=1,
    )
    log = (run / "logs" / f"{job}_0_log.err").read_text()
    assert [s for s, _ in runs] == ["REQUEUED", "COMPLETED"], (runs, log[-3000:])
    assert "will resume from the last periodic checkpoint, step" in log
    resumed = [int(m) for m in re.findall(r"resumed \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and step <= resumed[0] < 60, (resumed, log[-3000:])
    a, b = result(run), result(tmp_path / "reference")
    assert a["epochs_completed"] == b["epochs_completed"] == 3 and a["steps"] == b["steps"]
    assert len(a["history"]) == len(b["history"]) == 3
    for ra, rb in zip(a["history"], b["history"]):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-9, abs=1e-12), (k, ra, rb)
