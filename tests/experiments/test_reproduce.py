"""`bioscale reproduce` end to end on tiny budgets: real Fashion-MNIST rows (the table the
docs publish), synthetic stand-ins for the MNIST / CIFAR-10 / ImageNet tables, the report's
aggregation over seeds, and the CLI."""

from __future__ import annotations

import csv
import json

import pytest

from bioscale.cli import main
from bioscale.cluster.launcher import job_records
from bioscale.experiments import Budget, get_table, reproduce
from bioscale.experiments.report import CSV_COLUMNS, collect, write_markdown
from bioscale.experiments.runner import plan
from bioscale.training.run_records import WALL_FILE, mark_diverged
from tests.datasets import prepare_small_fashion
from tests.experiments.standins import prepare_fake_cifar, prepare_fake_imagenet

TINY = Budget(
    epochs=2,
    max_steps_per_epoch=2,
    alternating_factor=2,
    overrides=(
        "data.batch_size_per_rank=32",
        "data.eval_batch_size_per_rank=200",
        "data.num_workers=0",
        "train.log_every_steps=1",
        "train.angle_every_steps=2",
        "train.checkpoint_every_steps=0",
        "train.selection_window=2",
    ),
)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion"))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_fashion_rows_end_to_end_and_rerun_skips(fashion, tmp_path):
    rows = ["fc_bp", "lc_sdtp", "fc_dtp_alt", "neurips_conv_bp"]
    summary = reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=rows)
    lines = read_csv(tmp_path / "results.csv")
    assert tuple(lines[0]) == CSV_COLUMNS
    got = {(r["rule"], r["schedule"], r["arch"]): r for r in lines}
    assert set(got) == {
        ("bp", "", "fc"),
        ("sdtp", "parallel", "lc"),
        ("dtp", "alternating", "fc"),
        ("bp", "", "neurips_conv"),
    }
    for r in lines:
        assert r["status"] == "ok" and r["seeds"] == "1"
        assert 0.0 <= float(r["train_top1_err"]) <= 1.0 and 0.0 <= float(r["test_top1_err"]) <= 1.0
    assert got[("dtp", "alternating", "fc")]["epochs"] == "4"  # twice the epochs: half of them train inverses
    assert got[("bp", "", "fc")]["paper_test_top1_err"] == "0.0196"  # ICLR Table 1, FC, BP
    md = (tmp_path / "results.md").read_text()
    assert "| BP |" in md and "| BP ConvNet |" in md and "0.00 / 1.96" in md and "NeurIPS FC" not in md
    assert "configs/fashion_mnist/lc_sdtp.yaml" in md
    names = sorted(p.name for p in summary.figures)
    assert names == ["angles_fc.png", "angles_lc.png", "bars.png", "curves.png"]
    for fig in summary.figures:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{fig.name}" in md

    wall = tmp_path / "runs/fashion_mnist/fc_bp/seed0" / WALL_FILE
    before = json.loads(wall.read_text())
    again = reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=rows, figures=False)
    assert json.loads(wall.read_text()) == before  # finished rows are not trained again
    assert again.wall_s < 5

    # more seeds for one row, then the whole table's report counts them
    reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=["fc_bp"], seeds=2, figures=False)
    reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=rows, figures=False)
    seeds = {r["row"]: r["seeds"] for r in read_csv(tmp_path / "results.csv")}
    assert seeds["fashion_mnist/fc_bp"] == "2" and seeds["fashion_mnist/lc_sdtp"] == "1"
    assert " ± " in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "table,rows,standin",
    [
        # the default suite runs the ImageNet table (the product's target; its synthetic
        # stand-in exercises the 224 data path); the others are slow (70-80 s each on 2 cores)
        pytest.param(
            "mnist",
            ["neurips2018/mnist/lc_dfa", "iclr2018/mnist/fc_sdtp_alternating"],
            "fashion",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "cifar10",
            ["iclr2018/cifar10/conv_bp", "iclr2018/cifar10/lc_dtp_parallel"],
            "cifar",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "cifar10-aug",
            ["iclr2018/cifar10_aug/lc_sdtp_alternating", "neurips2018/cifar10_aug/fc_aosdtp_parallel"],
            "cifar",
            marks=pytest.mark.slow,
        ),
        ("imagenet", ["neurips2018/imagenet/conv_bp"], "imagenet"),
    ],
)
def test_other_tables_run_on_synthetic_standins(table, rows, standin, fashion, tmp_path_factory, tmp_path):
    if standin == "fashion":
        data = fashion
    elif standin == "cifar":
        data = prepare_fake_cifar(tmp_path_factory.mktemp("cifar"))
    else:
        data = prepare_fake_imagenet(tmp_path_factory.mktemp("imagenet"))
    summary = reproduce(table, TINY, data=data, out=tmp_path, rows=rows, figures=False)
    lines = read_csv(summary.csv)
    assert sorted(r["row"] for r in lines) == sorted(rows)
    assert all(r["status"] == "ok" for r in lines)
    md = summary.markdown.read_text()
    if table == "imagenet":
        assert "test top-5 %" in md
        assert 0.0 <= float(lines[0]["test_top5_err"]) <= 1.0
        assert lines[0]["paper_test_top5_err"] == "0.4017"  # NeurIPS: BP ConvNet 63.93 / 40.17


def test_later_table_draws_the_kp_feedback_angle(fashion, tmp_path):
    """Kolen–Pollack logs angle(B_l, W_l) per layer and the report draws it (the paper's
    table, above, has no such figure: none of its rules trains a feedback matrix)."""
    summary = reproduce("later-fashion-mnist", TINY, data=fashion, out=tmp_path, rows=["fc_kp"])
    names = sorted(p.name for p in summary.figures)
    assert names == ["angles_fc.png", "bars.png", "curves.png", "feedback_angles.png"]
    metrics = (tmp_path / "runs/later_rules/fashion_mnist/fc_kp/seed0/metrics.jsonl").read_text()
    assert "angle/feedback_vs_forward/l2" in metrics
    assert "figures/feedback_angles.png" in (tmp_path / "results.md").read_text()


def test_report_aggregates_seeds_and_marks_failures(tmp_path):
    table = get_table("fashion-mnist")
    runs = plan(table, TINY, tmp_path / "data", tmp_path, seeds=2, rows=["fc_bp", "fc_fa", "fc_dfa"])
    errors = {("bp", 0): 0.10, ("bp", 1): 0.14, ("fa", 0): 0.5}  # fa seed 1: missing; dfa: diverged
    for run in runs:
        test_err = errors.get((run.row.rule, run.seed))
        if test_err is None:
            continue
        run.run_dir.mkdir(parents=True)
        history = [
            {"epoch": e, "train_top1_err": 0.05, "val_top1_err": test_err, "test_top1_err": test_err} for e in range(2)
        ]
        result = {
            "selected_epoch": 1,
            "val_top1_err": test_err,
            "test_top1_err": test_err,
            "epochs_completed": 2,
            "steps": 4,
            "history": history,
        }
        (run.run_dir / "result.json").write_text(json.dumps(result))
    for dfa in (r for r in runs if r.row.rule == "dfa"):
        mark_diverged(dfa.run_dir, "diverged at step 3: task loss is nan")
    results = {r.row.rule: r for r in collect(table, runs)}
    assert results["bp"].mean("test_top1_err") == pytest.approx(0.12)
    assert results["bp"].std("test_top1_err") == pytest.approx(0.0283, abs=1e-4)
    assert (results["bp"].status, results["fa"].status, results["dfa"].status) == ("ok", "missing", "diverged")
    md = write_markdown(table, list(results.values()), tmp_path / "results.md").read_text()
    assert "12.00 ± 2.83" in md and "diverged" in md


def test_cli_list_one_row_and_missing_data(fashion, tmp_path, capsys):
    assert main(["reproduce", "imagenet", "--list"]) == 0
    assert "neurips2018/imagenet/lc_dtp_alternating" in capsys.readouterr().out
    rc = main(["reproduce", "cifar10", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "nothing")])
    assert rc == 2 and "bioscale prepare cifar10" in capsys.readouterr().err
    rc = main(
        [
            "reproduce",
            "fashion-mnist",
            "--data",
            str(fashion),
            "--out",
            str(tmp_path / "f"),
            "--rows",
            "fc_sdtp",
            "--no-figures",
            "--set",
            "train.epochs=1",
            "--set",
            "train.max_steps_per_epoch=2",
            "--set",
            "data.num_workers=0",
        ]
    )
    assert rc == 0
    (line,) = read_csv(tmp_path / "f/results.csv")
    assert (line["rule"], line["schedule"], line["arch"], line["epochs"]) == ("sdtp", "parallel", "fc", "1")
    assert "Command: `bioscale reproduce fashion-mnist --budget small" in (tmp_path / "f/results.md").read_text()


def test_a_diverged_row_is_finished_and_not_resubmitted(fashion, tmp_path):
    """Under the local executor (the SLURM twin is tests/cluster/test_reproduce_slurm.py)."""
    nan = ["optim.forward.lr=1e37", "optim.inverse.lr=1e37"]
    first = reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=["fc_sdtp"], overrides=nan, figures=False)
    assert [r.status for r in first.results] == ["diverged"]
    run_dir = tmp_path / "runs/fashion_mnist/fc_sdtp/seed0"
    assert "diverged at step" in json.loads((run_dir / "diverged.json").read_text())["message"]
    assert [r["cluster"] for r in job_records(run_dir)] == ["local"]
    again = reproduce("fashion-mnist", TINY, data=fashion, out=tmp_path, rows=["fc_sdtp"], overrides=nan, figures=False)
    assert [r.status for r in again.results] == ["diverged"] and len(job_records(run_dir)) == 1
    assert "diverged" in again.markdown.read_text()


def test_rows_run_in_parallel_in_the_local_pool(fashion, tmp_path, capsys):
    rc = main(
        ["reproduce", "fashion-mnist", "--data", str(fashion), "--out", str(tmp_path), "--rows", "fc_bp",
         "--rows", "fc_fa", "--max-parallel", "2", "--no-figures", "--set", "train.epochs=1",
         "--set", "train.max_steps_per_epoch=2", "--set", "data.num_workers=0"]
    )  # fmt: skip
    assert rc == 0
    runs = [tmp_path / "runs/fashion_mnist" / row / "seed0" for row in ("fc_bp", "fc_fa")]
    pids = set()
    for run_dir in runs:
        (record,) = job_records(run_dir)
        state = json.loads((tmp_path / "logs" / f"{record['job_id']}.state.json").read_text())
        assert state["state"] == "COMPLETED" and state["exit_code"] == "0:0"
        pids.add(state["pid"])
    assert len(pids) == 2  # one fresh process per run
    assert "local pool (2 process(es)" in (tmp_path / "results.md").read_text()
