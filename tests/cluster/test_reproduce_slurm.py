"""`bioscale reproduce --launcher slurm` against the real local SLURM: the same runner and
executor interface as the local pool (tests/experiments/test_reproduce.py), rows trained as
a SLURM job array, a re-run submits nothing, and a diverged row counts as finished."""

from __future__ import annotations

import csv

import pytest

from bioscale.cluster.launcher import job_records
from tests.cluster.cluster_helpers import bioscale

pytestmark = pytest.mark.slurm

SETS = ("train.epochs=1", "train.max_steps_per_epoch=3", "data.num_workers=0", "data.batch_size_per_rank=32")
FAST = [*(w for s in SETS for w in ("--set", s)), "--no-figures", "--launcher", "slurm", "--profile", "local"]


def _rows(out):
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def test_rows_run_as_slurm_jobs_and_a_rerun_submits_nothing(slurm, shards, tmp_path):
    args = ["reproduce", "fashion-mnist", "--data", shards, "--out", tmp_path, "--rows", "fc_bp", "--rows", "lc_sdtp"]
    bioscale(*args, *FAST, check=True)
    rows = _rows(tmp_path)
    assert {k: r["status"] for k, r in rows.items()} == {"fashion_mnist/fc_bp": "ok", "fashion_mnist/lc_sdtp": "ok"}
    run_dirs = [tmp_path / "runs/fashion_mnist" / r / "seed0" for r in ("fc_bp", "lc_sdtp")]
    records = [job_records(d) for d in run_dirs]
    assert all(len(r) == 1 and r[0]["cluster"] == "slurm" for r in records)
    assert records[0][0]["job_id"].split("_")[0] == records[1][0]["job_id"].split("_")[0]  # one array
    assert "runs on SLURM" in (tmp_path / "results.md").read_text()
    bioscale(*args, *FAST, check=True)
    assert [job_records(d) for d in run_dirs] == records


@pytest.mark.slow  # the same rule on the local pool: tests/experiments/test_reproduce.py (diverged row)
def test_a_diverged_row_is_not_resubmitted(slurm, shards, tmp_path):
    args = ["reproduce", "fashion-mnist", "--data", shards, "--out", tmp_path, "--rows", "fc_dfa",
            "--set", "optim.forward.lr=1e37", *FAST]  # fmt: skip
    first = bioscale(*args)
    assert first.returncode == 1, first.stderr  # not every row is ok ...
    assert _rows(tmp_path)["fashion_mnist/fc_dfa"]["status"] == "diverged"  # ... because it diverged
    run_dir = tmp_path / "runs/fashion_mnist/fc_dfa/seed0"
    assert (run_dir / "diverged.json").exists() and len(job_records(run_dir)) == 1
    again = bioscale(*args)
    assert again.returncode == 1 and len(job_records(run_dir)) == 1
    assert "0 to run" in again.stderr
