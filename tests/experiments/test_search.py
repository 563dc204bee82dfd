"""A full-budget row at a tiny budget, end to end: the row's pruned random search (three
configurations, two stages of pruning), the kept configuration trained on to the final
epochs as seed 0, a second seed of it, and the report row with the chosen hyperparameters
and the search's trials; a re-run submits nothing."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from bioscale.cluster.executors import LocalExecutor
from bioscale.cluster.launcher import job_records
from bioscale.experiments import Budget, reproduce
from bioscale.experiments.table_types import Search
from tests.datasets import prepare_small_fashion
from tests.experiments.test_reproduce import TINY

SEARCHED = Budget(
    epochs=3,
    max_steps_per_epoch=2,
    alternating_factor=2,
    seeds=2,
    search=Search(trials=3, prune_after_epochs=(1, 2), keep=(2, 1), seed=5),
    overrides=TINY.overrides,
)


class CountingPool(LocalExecutor):
    """The local pool, noting after every submission how many of its jobs are queued or running."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ids: list[str] = []
        self.active_after_submit: list[int] = []

    def submit(self, jobs, job_name):
        ids = super().submit(jobs, job_name)
        self.ids += ids
        self.active_after_submit.append(sum(state.active for state in self.query(self.ids).values()))
        return ids


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    data = prepare_small_fashion(tmp_path_factory.mktemp("fashion_search"))
    out = tmp_path_factory.mktemp("searched")
    pool = CountingPool(out / "logs", max_parallel=2, threads_per_job=1)
    try:
        summary = reproduce(
            "fashion-mnist", SEARCHED, data=data, out=out, rows=["lc_sdtp"], executor=pool, figures=False, poll_s=0.2
        )
    finally:
        pool.shutdown()
    return {"out": out, "data": data, "summary": summary, "pool": pool}


def test_the_pool_never_holds_more_jobs_than_slots(searched):
    """Three trials on two slots: the third is queued only once a slot is free, so in a
    table a row's next stage is never stuck behind a later row's trials (FIFO pool)."""
    pool = searched["pool"]
    assert len(pool.ids) == 3 + 2 + 1 + 1  # 3 trials, 2 continued after stage 1, the winner, seed 1
    assert max(pool.active_after_submit) <= 2, pool.active_after_submit


def test_search_prunes_twice_and_its_winner_is_seed_0(searched):
    root = searched["out"] / "search/fashion_mnist/lc_sdtp"
    pruning = json.loads((root / "pruning.json").read_text())
    first, second = pruning["decisions"]
    assert (first["after_epochs"], len(first["keep"]), second["after_epochs"], len(second["keep"])) == (1, 2, 2, 1)
    (winner,) = second["keep"]
    assert set(second["keep"]) <= set(first["keep"]) and sorted(first["keep"] + first["pruned"]) == [0, 1, 2]
    epochs = {t: json.loads((root / f"trials/t{t:03d}/result.json").read_text())["epochs_completed"] for t in range(3)}
    assert epochs[winner] == 3 and all(epochs[t] == (1 if t in first["pruned"] else 2) for t in epochs if t != winner)
    trial_params = json.loads((root / f"trials/t{winner:03d}/trial.json").read_text())["params"]
    seed1 = searched["out"] / "runs/fashion_mnist/lc_sdtp/seed1"
    cfg = yaml.safe_load((seed1 / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["train"]["epochs"] == 3
    assert cfg["optim"]["forward"]["lr"] == trial_params["optim.forward.lr"]
    assert cfg["algorithm"]["sigma"] == trial_params["algorithm.sigma"]
    assert json.loads((seed1 / "result.json").read_text())["epochs_completed"] == 3


def test_the_report_row_has_both_seeds_the_chosen_values_and_the_trials(searched):
    with open(searched["out"] / "results.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["rule"], row["arch"], row["status"], row["seeds"], row["epochs"]) == ("sdtp", "lc", "ok", "2", "3")
    root = searched["out"] / "search/fashion_mnist/lc_sdtp"
    winner = json.loads((root / "pruning.json").read_text())["keep"][0]
    params = json.loads((root / f"trials/t{winner:03d}/trial.json").read_text())["params"]
    assert float(row["lr"]) == pytest.approx(params["optim.forward.lr"])
    assert float(row["inverse_lr"]) == pytest.approx(params["optim.inverse.lr"])
    md = (searched["out"] / "results.md").read_text()
    assert "## Hyperparameter search" in md and "### fashion_mnist/lc_sdtp" in md
    assert all(f"| t{t:03d} |" in md for t in range(3)) and md.count("| pruned |") == 2
    assert (root / "report.md").exists() and (root / "report.csv").exists()


def test_rerunning_the_searched_table_submits_nothing(searched):
    out = searched["out"]
    dirs = [*sorted((out / "search/fashion_mnist/lc_sdtp/trials").iterdir()), out / "runs/fashion_mnist/lc_sdtp/seed1"]
    before = [job_records(d) for d in dirs]
    again = reproduce(
        "fashion-mnist", SEARCHED, data=searched["data"], out=out, rows=["lc_sdtp"], figures=False, poll_s=0.2
    )
    assert [job_records(d) for d in dirs] == before
    assert [r.status for r in again.results] == ["ok"]


def test_rows_narrow_a_budget_and_never_add_to_it():
    from bioscale.experiments import get_table
    from bioscale.experiments.runner import choose_rows
    from bioscale.training.config import ConfigError

    table = get_table("fashion-mnist")
    full = table.budgets["full"]
    keys = {r.key.rsplit("/", 1)[-1] for r in choose_rows(table, full, ["fc_*"])}
    # the table has more fc_ rows (fc_aosdtp_alt, ...) than the full budget runs
    assert {r.key.rsplit("/", 1)[-1] for r in table.rows if r.key.rsplit("/", 1)[-1].startswith("fc_")} > keys
    assert keys == {f"fc_{r}" for r in ("dtp", "dtp_alt", "sdtp", "sdtp_alt", "aosdtp", "fa", "dfa", "bp")}
    with pytest.raises(ConfigError, match="in this budget"):
        choose_rows(table, full, ["fc_aosdtp_alt"])
    assert any(r.key.endswith("fc_aosdtp_alt") for r in choose_rows(table, table.budgets["small"], ["fc_*"]))
