"""Run the rows of a table: plan one training run per (row, seed), skip the finished ones,
hand the rest to an executor (here: in-process, one after the other; the CLI may pass a
SLURM one), then collect every run's result.json.

Layout under OUT:
    OUT/runs/<row key>/seed<k>/   the trainer's run directory (config.yaml, tb/, result.json, ...)
    OUT/results.csv, OUT/results.md, OUT/figures/*.png   (report.py, figures.py)
Re-running the same command skips finished runs and resumes unfinished ones (the trainer
resumes from its last checkpoint)."""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bioscale.configs import CONFIG_DIR as CONFIGS
from bioscale.experiments.tables import Budget, Row, Table
from bioscale.training.config import ExperimentConfig, load_config

log = logging.getLogger("bioscale.reproduce")
WALL_FILE = "reproduce_wall.json"
"""Seconds this runner spent training a run, summed over attempts (the trainer does not time itself)."""


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
    their last part ('fc_*'); empty = every row. `overrides` apply to every run, last."""
    chosen = [
        r
        for r in table.rows
        if not rows or any(fnmatch.fnmatch(r.key, p) or fnmatch.fnmatch(r.key.rsplit("/", 1)[-1], p) for p in rows)
    ]
    if not chosen:
        raise ValueError(
            f"no row of table {table.name!r} matches {list(rows)}; rows: {', '.join(r.key for r in table.rows)}"
        )
    data, out = Path(data).resolve(), Path(out).resolve()
    runs = []
    for row in chosen:
        for seed in range(seeds or budget.seeds):
            run_dir = out / "runs" / row.key / f"seed{seed}"
            ov = budget.row_overrides(row) + [f"seed={seed}", f"data.path={data}", f"out={run_dir}", *overrides]
            runs.append(PlannedRun(row, seed, Path(configs) / row.config, ov, run_dir))
    return runs


def with_existing_seeds(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The planned runs plus any other seed a row already has on disk (an earlier
    `--seeds N --rows ...` call), so that the full table's report includes them."""
    out = list(runs)
    planned = {(run.row.key, run.seed) for run in runs}
    firsts = {}
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


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_finished(run: PlannedRun, cfg: ExperimentConfig | None = None) -> bool:
    """All epochs done, or diverged (a rerun would resume from the last good state and diverge again)."""
    if (read_json(run.run_dir / WALL_FILE) or {}).get("status", "").startswith("diverged"):
        return True
    result = read_json(run.run_dir / "result.json")
    if result is None:
        return False
    epochs = (cfg or run.load_config()).train.epochs
    return result.get("epochs_completed", 0) >= epochs


def _add_wall(run_dir: Path, seconds: float, status: str) -> None:
    previous = read_json(run_dir / WALL_FILE) or {}
    record = {
        "wall_s": previous.get("wall_s", 0.0) + seconds,
        "attempts": previous.get("attempts", 0) + 1,
        "status": status,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WALL_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def run_local(runs: Sequence[PlannedRun]) -> None:
    """Train each run in this process, one after the other. A diverged run is recorded and
    the table goes on (the report marks it); any other error stops the table."""
    from bioscale.training.divergence import DivergenceError
    from bioscale.training.trainer import Trainer

    for i, run in enumerate(runs, 1):
        cfg = run.load_config()
        shown = [o for o in run.overrides if not o.startswith(("data.path=", "out="))]
        log.info("[%d/%d] %s: %s", i, len(runs), run.label, " ".join(shown))
        t0 = time.perf_counter()
        try:
            Trainer(cfg).fit()
            status = "ok"
        except DivergenceError as exc:
            log.warning("%s diverged: %s", run.label, exc)
            status = f"diverged: {exc}"
        _add_wall(run.run_dir, time.perf_counter() - t0, status)


Executor = Callable[[Sequence[PlannedRun]], None]


def run_table(
    table: Table,
    budget: Budget,
    data: str | Path,
    out: str | Path,
    *,
    seeds: int | None = None,
    rows: Sequence[str] = (),
    overrides: Sequence[str] = (),
    executor: Executor = run_local,
    configs: str | Path = CONFIGS,
) -> list[PlannedRun]:
    """Plan, run what is not finished, and return the plan (report.collect reads the results)."""
    runs = plan(table, budget, data, out, seeds=seeds, rows=rows, overrides=overrides, configs=configs)
    cfgs = [run.load_config() for run in runs]  # every config error surfaces before any training
    pending = [run for run, cfg in zip(runs, cfgs) if not is_finished(run, cfg)]
    skipped = len(runs) - len(pending)
    log.info("table %s: %d runs, %d finished already, %d to run", table.name, len(runs), skipped, len(pending))
    if pending:
        executor(pending)
    return runs
