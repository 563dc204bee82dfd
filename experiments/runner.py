"""Run the rows of a table: plan one training run per (row, seed), skip the finished ones
(all epochs done, or diverged), hand the rest to an executor of cluster/ — the local
process pool or SLURM, the same code for both, the same one sweeps use — wait for them,
then collect every run's result.json.

Layout under OUT:
    OUT/runs/<row key>/seed<k>/   the trainer's run directory (config.yaml, tb/, result.json, ...)
    OUT/results.csv, OUT/results.md, OUT/figures/*.png   (report.py, figures.py)
Re-running the same command skips finished runs, waits for ones still queued or running
from an earlier call (SLURM), and resumes unfinished ones (the trainer resumes from its
last checkpoint); a diverged run is never resubmitted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bioscale.cluster import launcher
from bioscale.cluster.executors import Executor, LocalExecutor
from bioscale.cluster.training_job import TrainingJob
from bioscale.configs import CONFIG_DIR as CONFIGS
from bioscale.experiments.table_types import Budget, Row, Table, row_matches
from bioscale.training.config import ConfigError, ExperimentConfig
from bioscale.training.config_loader import load_config
from bioscale.training.preflight import check_experiment
from bioscale.training.run_records import run_state

log = logging.getLogger("bioscale.reproduce")


@dataclass
class PlannedRun:
    row: Row
    seed: int
    config_path: Path
    overrides: list[str]
    run_dir: Path

    def load_config(self) -> ExperimentConfig:
        return load_config(self.config_path, self.overrides)

    @property
    def label(self) -> str:
        return f"{self.row.key} seed {self.seed}"


def plan(
    table: Table,
    budget: Budget,
    data: str | Path,
    out: str | Path,
    *,
    seeds: int | None = None,
    rows: Sequence[str] = (),
    overrides: Sequence[str] = (),
    configs: str | Path = CONFIGS,
) -> list[PlannedRun]:
    """One run per (row, seed). `rows`: glob patterns on row keys ('fashion_mnist/fc_*') or on
    their last part ('fc_*'); empty = the budget's rows (every row unless it names some).
    `overrides` apply to every run, last."""
    chosen = choose_rows(table, budget, rows)
    data, out = Path(data).resolve(), Path(out).resolve()
    runs = []
    for row in chosen:
        for seed in range(seeds or budget.seeds_for(row)):
            run_dir = out / "runs" / row.key / f"seed{seed}"
            ov = budget.row_overrides(row) + [f"seed={seed}", f"data.path={data}", f"out={run_dir}", *overrides]
            runs.append(PlannedRun(row, seed, Path(configs) / row.config, ov, run_dir))
    return runs


def choose_rows(table: Table, budget: Budget, rows: Sequence[str] = ()) -> list[Row]:
    """The budget's rows (all when it names none) that match any of `rows` (all when empty):
    `--rows` narrows a budget, it never adds rows the budget leaves out (a 'fc_*' at the
    full budget must not start a search for a row that budget does not run)."""
    in_budget = [r for r in table.rows if not budget.rows or any(row_matches(r, p) for p in budget.rows)]
    chosen = [r for r in in_budget if not rows or any(row_matches(r, p) for p in rows)]
    if not chosen:
        raise ConfigError(
            f"no row of table {table.name!r} in this budget matches {list(rows)}; "
            f"its rows: {', '.join(r.key for r in in_budget)}"
        )
    return chosen


def with_existing_seeds(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The planned runs plus any other seed a row already has on disk (an earlier
    `--seeds N --rows ...` call), so that the full table's report includes them."""
    out = list(runs)
    planned = {(run.row.key, run.seed) for run in runs}
    firsts: dict[str, PlannedRun] = {}
    for run in runs:
        firsts.setdefault(run.row.key, run)
    for key, run in firsts.items():
        for seed_dir in sorted(run.run_dir.parent.glob("seed*")):
            seed = seed_dir.name.removeprefix("seed")
            if seed.isdigit() and (key, int(seed)) not in planned and (seed_dir / "result.json").exists():
                # same overrides; the seed and run directory are the ones `plan` would have given it
                ov = [o for o in run.overrides if not o.startswith(("seed=", "out="))]
                out.append(
                    PlannedRun(run.row, int(seed), run.config_path, ov + [f"seed={seed}", f"out={seed_dir}"], seed_dir)
                )
    return out


def is_finished(run: PlannedRun, cfg: ExperimentConfig | None = None) -> bool:
    """All epochs done, or diverged (a rerun would resume from the last good state and diverge again)."""
    return run_state(run.run_dir, (cfg or run.load_config()).train.epochs).done


def run_table(
    table: Table,
    budget: Budget,
    data: str | Path,
    out: str | Path,
    *,
    seeds: int | None = None,
    rows: Sequence[str] = (),
    overrides: Sequence[str] = (),
    executor: Executor | None = None,
    configs: str | Path = CONFIGS,
    poll_s: float = 10.0,
) -> list[PlannedRun]:
    """Plan, run what is not finished through `executor` (default: a one-process local
    pool) and wait for it; return the plan (report.collect reads the results)."""
    runs = plan(table, budget, data, out, seeds=seeds, rows=rows, overrides=overrides, configs=configs)
    cfgs = [run.load_config() for run in runs]  # every config error surfaces before any training
    pending = [(run, cfg) for run, cfg in zip(runs, cfgs) if not is_finished(run, cfg)]
    log.info(
        "table %s: %d runs, %d finished already, %d to run",
        table.name,
        len(runs),
        len(runs) - len(pending),
        len(pending),
    )
    if pending:
        own = executor is None
        jobs = executor or LocalExecutor(Path(out).resolve() / "logs")
        try:
            execute(pending, jobs, job_name=f"bioscale-{table.name}", poll_s=poll_s)
        finally:
            if own:
                jobs.shutdown()
    return runs


def execute(
    pending: Sequence[tuple[PlannedRun, ExperimentConfig]], executor: Executor, job_name: str, poll_s: float = 10.0
) -> None:
    """Submit every pending run that has no live job yet (checked first, all of them, before
    anything is queued), then wait for all of them. Runs that end unfinished are logged;
    re-running the table resumes them."""
    waiting, new = [], []
    for run, cfg in pending:
        active = launcher.active_job(run.run_dir, executor)
        if active:  # submitted by an earlier invocation and still queued or running
            log.info("%s: job %s of an earlier call is still active; waiting for it", run.label, active)
            waiting.append(active)
        else:
            check_experiment(cfg)
            new.append((run, cfg))
    if new:
        ids = executor.submit([TrainingJob(cfg.to_dict(), label=run.label) for run, cfg in new], job_name=job_name)
        for (run, _), job_id in zip(new, ids):
            launcher.record_job(run.run_dir, job_id, executor)
        log.info("submitted %d run(s) to %s: %s", len(ids), executor.describe(), ", ".join(ids))
        waiting += ids
    states = executor.wait(waiting, poll_s=poll_s)
    unfinished = [run for run, cfg in pending if not is_finished(run, cfg)]
    for run in unfinished:
        records = launcher.job_records(run.run_dir, executor.cluster)
        last_job: str | None = records[-1]["job_id"] if records else None
        state = states.get(last_job) if last_job else None
        tail = executor.log_tail(last_job, lines=3) if last_job else ""
        log.warning(
            "%s: job %s ended %s (exit %s) before its last epoch; re-run to resume it\n%s",
            run.label,
            last_job,
            state.state if state else "?",
            state.exit_code if state else "?",
            tail,
        )
