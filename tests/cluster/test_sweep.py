"""`bioscale sweep` against the real local SLURM: 6 random trials on
Fashion-MNIST as a job array (2 at a time), pruned after 1 epoch keeping the
best 2, which continue from their checkpoints to 2 epochs; the report ranks
them; re-running the command submits nothing; the hparams reach TensorBoard."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time

import pytest

from tests.cluster.cluster_helpers import bioscale, result

pytestmark = pytest.mark.slurm

# Wider than the paper's learning rates so that 20 steps separate the trials.
SPACE = """\
optim.forward.lr: {log_uniform: [1.0e-4, 1.0e-2]}
optim.forward.beta2: {choice: [0.99, 0.999]}
optim.inverse.lr: {log_uniform: [1.0e-4, 1.0e-2]}
algorithm.sigma: {uniform: [0.01, 0.3]}
"""


def _sweep_jobs(name: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-D", "-S", "now-6hours", "-o", "JobID", "--name", f"bioscale-sweep-{name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


@pytest.fixture(scope="module")
def sweep(slurm, shards, tmp_path_factory):
    from tests.cluster.conftest import FAST_CONFIG

    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "fast.yaml").write_text(FAST_CONFIG)
    (tmp / "space.yaml").write_text(SPACE)
    name = f"sw{os.getpid()}-{int(time.time())}"  # unique: sacct remembers earlier sessions' sweeps
    args = [
        "sweep",
        "--config",
        tmp / "fast.yaml",
        "--data",
        shards,
        "--out",
        tmp / "sweep",
        "--trials",
        "6",
        "--space",
        tmp / "space.yaml",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--prune-after-epochs",
        "1",
        "--keep",
        "2",
        "--max-parallel",
        "2",
        "--poll-s",
        "1",
        "--name",
        name,
    ]
    first = bioscale(*args, check=True)
    return {"dir": tmp / "sweep", "args": args, "first": first, "name": name}


def test_sweep_prunes_to_the_best_two_and_continues_them(sweep):
    root = sweep["dir"]
    pruning = json.loads((root / "pruning.json").read_text())
    ranking = pruning["ranking"]
    assert len(ranking) == 6 and pruning["after_epochs"] == 1
    by_val = sorted(ranking, key=lambda r: (r["val_top1_err"], r["trial"]))
    assert pruning["keep"] == [r["trial"] for r in by_val[:2]]
    for r in ranking:
        res = result(root / "trials" / f"t{r['trial']:03d}")
        assert res["history"][0]["val_top1_err"] == r["val_top1_err"]
        assert res["epochs_completed"] == (2 if r["trial"] in pruning["keep"] else 1)
    # the stage-1 array ran at most 2 at a time (SLURM's %2)
    scripts = sorted(p.read_text() for p in (root / "logs").glob("*_submission.sh"))
    assert sum("--array=0-5%2" in s for s in scripts) == 1 and sum("--array=0-1%2" in s for s in scripts) == 1


def test_winners_continue_from_their_checkpoints_not_from_scratch(sweep):
    root = sweep["dir"]
    for trial in json.loads((root / "pruning.json").read_text())["keep"]:
        run = root / "trials" / f"t{trial:03d}"
        jobs = [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]
        assert [j["epochs"] for j in jobs] == [1, 2]
        log = (root / "logs" / f"{jobs[1]['job_id']}_0_log.err").read_text()
        assert re.search(r"resumed \S+ at step 20 \(epoch 1\)", log), log
        res = result(run)
        assert res["steps"] == 40 and [h["epoch"] for h in res["history"]] == [0, 1]
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        # one curve, continued: never back to the start (a restart would log step 5 again)
        assert steps == sorted(steps) and steps.count(5) == 1 and steps[-1] == 40, steps


def test_report_ranks_the_kept_trials_first_and_writes_csv_and_markdown(sweep):
    root = sweep["dir"]
    proc = bioscale("sweep", "report", "--out", root, check=True)
    keep = json.loads((root / "pruning.json").read_text())["keep"]
    rows = list(csv.DictReader((root / "report.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert {rows[0]["trial"], rows[1]["trial"]} == {f"t{k:03d}" for k in keep}
    assert float(rows[0]["val_top1_%"]) <= float(rows[1]["val_top1_%"])
    assert [r["state"] for r in rows] == ["finished"] * 2 + ["pruned"] * 4
    assert {"fwd.lr", "inv.lr", "sigma", "test_top1_%"} <= set(rows[0])
    md = (root / "report.md").read_text()
    assert md.count("| finished |") == 2 and md.count("| pruned |") == 4
    assert rows[0]["trial"] in proc.stdout and "2 finished, 4 pruned" in proc.stdout


def test_rerunning_the_sweep_submits_nothing(sweep):
    before = _sweep_jobs(sweep["name"])
    assert len(before) == 8  # 6 trials + 2 continued
    again = bioscale(*sweep["args"], check=True)
    assert "submitted" not in again.stdout + again.stderr
    # a sweep stored by an earlier version (before model.weight_sharing existed) is the same sweep
    spec_file = sweep["dir"] / "sweep.json"
    spec = json.loads(spec_file.read_text())
    del spec["base_config"]["model"]["weight_sharing"]
    spec_file.write_text(json.dumps(spec))
    older = bioscale(*sweep["args"])
    assert older.returncode == 0 and "submitted" not in older.stdout + older.stderr, older.stderr
    # a different sweep in the same directory is refused, naming what differs
    args = list(sweep["args"])
    args[args.index("--seed") + 1] = "2"
    refused = bioscale(*args)
    assert refused.returncode == 2 and "seed: stored 1, now 2" in refused.stderr, refused.stderr
    assert _sweep_jobs(sweep["name"]) == before


def test_each_trial_logs_its_hparams_for_tensorboard(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sweep["dir"] / "trials" / "t000"
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    trial = json.loads((run / "trial.json").read_text())
    content = b"".join(acc.PluginTagToContent("hparams").values())
    assert b"optim.forward.lr" in content and b"algorithm.sigma" in content
    assert result(run)["name"].endswith("-t000") and trial["params"]["optim.forward.lr"] > 0
