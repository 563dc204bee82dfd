"""`bioscale launch ... --tasks-per-node 2 distributed.backend=pipeline distributed.stages=2`
(here with `--local`: submitit's local cluster starts the two tasks, no SLURM) trains a
2-stage pipeline into the usual run directory; a layout the stages do not divide is
refused before anything is submitted."""

from __future__ import annotations

import json

import pytest

from bioscale.training.config import ConfigError, load_config
from bioscale.training.preflight import check_layout
from tests.cluster.cluster_helpers import bioscale, result

PIPELINE = ["distributed.backend=pipeline", "distributed.stages=2"]


def test_local_launch_of_a_two_stage_pipeline(shards, fast_config, tmp_path):
    common = ["--config", fast_config, "--data", shards, "--out", tmp_path, "--local", "--tasks-per-node", "2"]
    proc = bioscale("launch", *common, "--name", "pipe", *PIPELINE, check=True)
    assert "pipeline 2 stages × 1 replicas, stage-major" in proc.stdout
    run = tmp_path / "pipe"
    res = result(run)
    assert res["epochs_completed"] == 2 and res["world_size"] == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["val_top1_err"] == res["val_top1_err"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["stage0", "stage1"]
    assert (run / "metrics.jsonl").exists() and (run / "tb").is_dir()
    bad = bioscale("launch", *common[:-1], "3", "--name", "bad", *PIPELINE)
    assert bad.returncode == 2, bad.stderr
    assert "does not divide the world size 3" in bad.stderr and "nothing was submitted" in bad.stderr
    assert not (tmp_path / "bad" / "jobs.jsonl").exists()


def test_layout_is_stage_major():
    cfg = load_config(None, [*PIPELINE])
    assert check_layout(load_config(None, []), 4) is None  # other backends: nothing to place
    text = check_layout(cfg, 4, tasks_per_node=2)
    assert text is not None and "2 stages × 2 replicas" in text
    assert "stage 0: ranks 0-1 on node(s) [0]" in text and "stage 1: ranks 2-3 on node(s) [1]" in text
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        check_layout(cfg, 3)
