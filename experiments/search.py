"""Tables whose budget searches each row's hyperparameters first (`Budget.search`): one
pruned random search per row — a sweep of cluster/sweep.py in OUT/search/<row key>/ — whose
last kept configuration trains on to the budget's epochs as the row's seed-0 run, then the
other seeds of that configuration in OUT/runs/<row key>/seed<k>/.

Everything runs through one executor, all rows in one loop: each poll advances the rows'
sweeps (the local pool or SLURM queues what is due) and submits the seed runs of every row
whose search is decided, earlier rows first (see `run_searched`), so the pool never idles
while one row's winner trains alone.
Re-running continues: sweeps recompute their state from their directories, finished and
diverged runs are never resubmitted, a seed run whose job failed is retried once per call.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bioscale.cluster import launcher
from bioscale.cluster.executors import Executor
from bioscale.cluster.search_space import as_overrides
from bioscale.cluster.sweep import BASE_CONFIG_FILE, Sweep, SweepLock, TrialStatus
from bioscale.cluster.sweep_spec import make_spec
from bioscale.cluster.training_job import TrainingJob
from bioscale.configs import CONFIG_DIR
from bioscale.experiments.runner import PlannedRun, choose_rows, is_finished
from bioscale.experiments.table_types import Budget, Row, Table
from bioscale.training.preflight import check_experiment
from bioscale.training.run_records import WALL_FILE, read_json

log = logging.getLogger("bioscale.reproduce")
SEARCH_DIR = "search"
ACTIVE = ("pending", "running", "requeued")


@dataclass
class RowSearch:
    row: Row
    sweep: Sweep
    epochs: int
    """Forward (+ inverse) epochs of the row's final runs."""
    seeds: int
    attempted: set[int] = field(default_factory=set)
    """Seed runs submitted by this call (a failed one is retried by the next call, not in a loop)."""

    @property
    def winner(self) -> int | None:
        """The configuration the search chose, once its last pruning is decided."""
        decisions = self.sweep.decisions()
        if len(decisions) < len(self.sweep.spec.keeps) or not decisions or not decisions[-1]["keep"]:
            return None
        return int(decisions[-1]["keep"][0])

    def runs(self, data: Path, out: Path) -> list[PlannedRun]:
        """The row's final runs: the winner's trial (seed 0), then the other seeds; before the
        search is decided, one placeholder (reported missing)."""
        base = self.sweep.root / BASE_CONFIG_FILE
        winner = self.winner
        if winner is None:
            undecided = self.sweep.root / "undecided"
            return [PlannedRun(self.row, 0, base, [f"data.path={data}", f"out={undecided}"], undecided)]
        params = as_overrides(self.sweep.params(winner))
        common = [*params, f"train.epochs={self.epochs}", f"data.path={data}"]
        trial = self.sweep.trial_dir(winner)
        runs = [PlannedRun(self.row, 0, base, [*common, f"out={trial}"], trial)]
        for seed in range(1, self.seeds):
            run_dir = out / "runs" / self.row.key / f"seed{seed}"
            runs.append(PlannedRun(self.row, seed, base, [*common, f"seed={seed}", f"out={run_dir}"], run_dir))
        return runs


def open_searches(
    table: Table,
    budget: Budget,
    data: Path,
    out: Path,
    executor: Executor | None,
    *,
    rows: Sequence[str] = (),
    overrides: Sequence[str] = (),
    seeds: int | None = None,
    configs: str | Path = CONFIG_DIR,
) -> list[RowSearch]:
    """Create or resume every chosen row's sweep (all trials validated before any is queued)."""
    search = budget.search
    if search is None or budget.epochs is None:
        raise ValueError(f"budget of table {table.name!r} has no search or no epochs")
    found = []
    for row in choose_rows(table, budget, rows):
        epochs = budget.epochs_for(row, budget.epochs)
        spec = make_spec(
            str(Path(configs) / row.config),
            [*budget.row_overrides(row), *overrides],
            str(data),
            search.space,
            search.trials,
            search.seed,
            epochs,
            [budget.epochs_for(row, e) for e in search.prune_after_epochs],
            list(search.keep),
            row.key.replace("/", "-"),
        )
        sweep = Sweep.create_or_resume(out / SEARCH_DIR / row.key, spec, executor)
        found.append(RowSearch(row, sweep, epochs, seeds or budget.seeds_for(row)))
    return found


def run_searched(
    searches: Sequence[RowSearch], data: Path, out: Path, executor: Executor, poll_s: float = 10.0
) -> list[PlannedRun]:
    """Drive every row's search and final runs until all are finished (or nothing more can
    run: failures, retried by the next call); returns the final runs of every row.

    Rows go in table order and an earlier row always gets the next free slot: with a
    bounded pool (`executor.capacity`) no more jobs are queued than there are free slots,
    so rows finish one after the other — a session that ends mid-table leaves whole rows
    done — instead of every row's first stage first, and a row's next stage never waits
    behind a later row's queued trials (the local pool runs jobs in submission order)."""
    with contextlib.ExitStack() as locks:
        for s in searches:
            locks.enter_context(SweepLock(s.sweep.root))
        seen: dict[str, str] = {}
        idle = False
        while True:
            submitted: list[str] = []
            busy = sum(_active_jobs(s, data, out, executor) for s in searches)
            for s in searches:
                free = None if executor.capacity is None else executor.capacity - busy
                if free is not None and free <= 0:
                    break
                new = s.sweep.advance(limit=free)
                new += _submit_seed_runs(s, data, out, executor, limit=None if free is None else free - len(new))
                submitted += new
                busy += len(new)
            statuses = {s.row.key: s.sweep.status(with_logs=False) for s in searches}
            progress = _progress(searches, statuses, data, out, executor)
            if progress != seen.get("line"):
                log.info("%s", progress)
                seen["line"] = progress
            finals = [r for s in searches for r in s.runs(data, out)]
            complete = all(s.sweep.complete(statuses[s.row.key]) for s in searches) and all(
                is_finished(r) for r in finals
            )
            if complete:
                return finals
            if not (submitted or any(_active_jobs(s, data, out, executor) for s in searches)):
                if idle:  # nothing left that can run (failures): the caller reports them
                    return finals
                idle = True  # a job may have ended after advance() read the states: once more
                continue
            idle = False
            time.sleep(poll_s)


def _active_jobs(s: RowSearch, data: Path, out: Path, executor: Executor) -> int:
    """The row's jobs queued or running now: its trials' and its seed runs'."""
    trials = sum(t.state in ACTIVE for t in s.sweep.status(with_logs=False))
    seeds = sum(launcher.active_job(r.run_dir, executor) is not None for r in s.runs(data, out)[1:])
    return trials + seeds


def _submit_seed_runs(s: RowSearch, data: Path, out: Path, executor: Executor, limit: int | None = None) -> list[str]:
    """Submit the row's seed runs (1, 2, ...) that are due, at most `limit` of them."""
    due = [
        run
        for run in s.runs(data, out)[1:]
        if run.seed not in s.attempted and not is_finished(run) and not launcher.active_job(run.run_dir, executor)
    ]
    due = due if limit is None else due[: max(0, limit)]
    if not due:
        return []
    cfgs = [run.load_config() for run in due]
    for cfg in cfgs:
        check_experiment(cfg)
    jobs = [TrainingJob(cfg.to_dict(), label=run.label) for run, cfg in zip(due, cfgs)]
    ids = executor.submit(jobs, job_name="bioscale-seeds")
    for run, job_id in zip(due, ids):
        launcher.record_job(run.run_dir, job_id, executor)
        s.attempted.add(run.seed)
    log.info("submitted the seed runs %s: %s", [run.label for run in due], ", ".join(ids))
    return ids


def _progress(
    searches: Sequence[RowSearch], statuses: dict[str, list[TrialStatus]], data: Path, out: Path, executor: Executor
) -> str:
    decided = sum(s.winner is not None for s in searches)
    trials = [t for st in statuses.values() for t in st]
    running = sum(t.state in ACTIVE for t in trials)
    finals = [r for s in searches for r in s.runs(data, out) if s.winner is not None]
    done = sum(is_finished(r) for r in finals)
    return (
        f"{len(searches)} rows: {decided} searches decided, {running} trial job(s) queued or running; "
        f"final runs {done}/{len(finals)} finished (on {executor.describe()})"
    )


def report_section(searches: Sequence[RowSearch], out: Path) -> str:
    """Markdown: per row, the search's trials ranked (as `bioscale sweep report` shows them),
    the chosen configuration and the compute the search took; also writes each sweep's own
    report.csv / report.md beside its trials."""
    from bioscale.cluster.sweep_report import markdown_table, rows, write_report

    parts = [
        "## Hyperparameter search",
        "",
        "Per row: every sampled configuration, ranked by the validation error of the paper's model "
        "selection at the stage it reached (state `pruned`: stopped at that stage). The kept one "
        "trained on to the final epochs as seed 0.",
    ]
    for s in searches:
        status = s.sweep.status(with_logs=False)
        write_report(s.sweep, status)
        walls = [read_json(s.sweep.trial_dir(t.trial) / WALL_FILE) or {} for t in status]
        hours = sum(w.get("wall_s", 0.0) for w in walls) / 3600
        winner = s.winner
        chosen = ", ".join(as_overrides(s.sweep.params(winner))) if winner is not None else "not decided yet"
        rel = s.sweep.root.relative_to(out) if s.sweep.root.is_relative_to(out) else s.sweep.root
        parts += [
            "",
            f"### {s.row.key}",
            "",
            f"Chosen: {chosen}. Trials' training time {hours:.2f} h; directory `{rel}`.",
            "",
            markdown_table(*rows(s.sweep, status)),
        ]
    return "\n".join(parts)
