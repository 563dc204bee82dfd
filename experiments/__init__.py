"""Reproduce the paper's tables: table definitions (tables), running their rows (runner),
the results table as CSV + Markdown (report) and figures (figures).

    from bioscale.experiments import reproduce
    summary = reproduce("fashion-mnist", "small", data="data/fashion-mnist", out="runs/repro")

Runs go through an executor of cluster/ (a local process pool by default, or SLURM)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bioscale.cluster.executors import Executor
from bioscale.experiments.table_types import Budget, Row, Table
from bioscale.experiments.tables import TABLES, get_table
from bioscale.training.config import ConfigError

__all__ = ["TABLES", "Budget", "Row", "Table", "get_table", "reproduce", "Summary"]


@dataclass
class Summary:
    csv: Path
    markdown: Path
    figures: list[Path]
    results: list
    wall_s: float


def reproduce(
    table: str | Table,
    budget: str | Budget = "small",
    *,
    data: str | Path,
    out: str | Path,
    seeds: int | None = None,
    rows: Sequence[str] = (),
    overrides: Sequence[str] = (),
    executor: Executor | None = None,
    figures: bool = True,
    context: Sequence[str] = (),
    poll_s: float = 10.0,
) -> Summary:
    """Run (or resume) every planned run of `table` at `budget`, then write OUT/results.csv,
    OUT/results.md and OUT/figures/*.png. `context`: lines put at the top of results.md
    (the command, the machine)."""
    from bioscale.experiments import report, runner

    table = get_table(table) if isinstance(table, str) else table
    if isinstance(budget, Budget):  # tests and scripts may pass their own
        chosen = budget
    elif budget in table.budgets:
        chosen = table.budgets[budget]
    else:
        raise ConfigError(f"table {table.name!r} has no budget {budget!r}; known: {', '.join(table.budgets)}")
    out = Path(out)
    t0 = time.perf_counter()
    sections: list[str] = []
    if chosen.search is not None:
        from bioscale.cluster.executors import LocalExecutor
        from bioscale.experiments import search

        jobs = executor or LocalExecutor(out.resolve() / "logs")
        data_dir, out_dir = Path(data).resolve(), out.resolve()
        try:
            searches = search.open_searches(
                table, chosen, data_dir, out_dir, jobs, rows=rows, overrides=overrides, seeds=seeds
            )
            runs = search.run_searched(searches, data_dir, out_dir, jobs, poll_s=poll_s)
        finally:
            if executor is None:
                jobs.shutdown()
        sections.append(search.report_section(searches, out_dir))
    else:
        runs = runner.run_table(
            table, chosen, data, out, seeds=seeds, rows=rows, overrides=overrides, executor=executor, poll_s=poll_s
        )
        runs = runner.with_existing_seeds(runs)
    wall = time.perf_counter() - t0
    results = report.collect(table, runs)
    pictures = []
    if figures:
        from bioscale.experiments import figures as figs

        first: dict[str, Path] = {}
        for run in runs:
            first.setdefault(run.row.key, run.run_dir)
        pictures = figs.all_figures(table, results, out / "figures", first)
    csv_path = report.write_csv(table, results, out / "results.csv")
    note = "; ".join(t for t in (chosen.note, _budget_text(chosen)) if t)
    context = [*context, f"Wall time of this invocation: {wall:.0f} s (runs finished earlier are skipped)."]
    md = report.write_markdown(
        table, results, out / "results.md", budget_note=note, context=context, figures=pictures, sections=sections
    )
    return Summary(csv_path, md, pictures, results, wall)


def _budget_text(budget: Budget) -> str:
    parts = []
    if budget.epochs is not None:
        parts.append(
            f"{budget.epochs} epochs"
            + (
                f" ({budget.epochs * budget.alternating_factor} for alternating "
                f"rows: every other epoch trains only the inverses)"
                if budget.alternating_factor > 1
                else ""
            )
        )
    if budget.max_steps_per_epoch is not None:
        parts.append(f"an epoch is at most {budget.max_steps_per_epoch} steps")
    if budget.overrides:
        parts.append("overrides " + " ".join(f"`{o}`" for o in budget.overrides))
    return ", ".join(parts)
