"""The committed results (docs/results.csv, docs/results.md) against the table they claim to be:
every row of the fashion-mnist table's full budget, at that budget, with the columns outside
scripts read, and every figure the page shows present. Fails when a row is missing, was run
at another budget, or a regenerated report dropped a column or a figure."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from bioscale.experiments.runner import choose_rows
from bioscale.experiments.tables import get_table

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTRACT = ("rule", "schedule", "arch", "epochs", "seeds", "train_top1_err", "test_top1_err", "test_top1_err_std", "lr")

pytestmark = pytest.mark.skipif(not (DOCS / "results.csv").exists(), reason="docs/ not in this checkout")


def _published() -> dict[str, dict[str, str]]:
    with (DOCS / "results.csv").open(newline="") as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def test_the_csv_has_every_full_budget_row_at_that_budget():
    table = get_table("fashion-mnist")
    budget = table.budgets["full"]
    rows = _published()
    expected = choose_rows(table, budget)
    assert sorted(rows) == sorted(r.key for r in expected)
    for row in expected:
        got = rows[row.key]
        assert all(got[c] != "" or c in ("schedule", "test_top1_err_std") for c in CONTRACT), row.key
        assert got["status"] == "ok", row.key
        assert int(got["epochs"]) == budget.epochs_for(row, budget.epochs), row.key
        assert int(got["seeds"]) == budget.seeds_for(row), row.key
        assert 0 < float(got["test_top1_err"]) < 0.5, row.key
        if got["rule"] in ("dtp", "sdtp", "aosdtp"):
            assert got["inverse_lr"] and got["sigma"], row.key
        if got["rule"] == "dtp":
            assert got["alpha"], row.key


def test_bp_on_the_lc_net_converged_train_well_below_test():
    bp = _published()["fashion_mnist/lc_bp"]
    assert float(bp["train_top1_err"]) < 0.75 * float(bp["test_top1_err"])


def test_every_figure_the_results_page_shows_is_committed():
    page = (DOCS / "results.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert images
    missing = [i for i in images if not (DOCS / i).is_file()]
    assert not missing
