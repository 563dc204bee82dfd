"""The one training entry point: `bioscale train`, SLURM and local-pool jobs (cluster/)
and the paper reproduction (experiments/) all start a run through `train_run`, so every
run leaves the same records (training/run_records.py) however it was started."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bioscale.distributed import read_environment
from bioscale.training.config import ExperimentConfig
from bioscale.training.divergence import DivergenceError
from bioscale.training.run_records import add_wall, mark_diverged
from bioscale.training.trainer import Trainer


def train_run(cfg: ExperimentConfig, init_from: str | None = None) -> dict[str, Any]:
    """Train (or resume) one run to its last epoch; returns the trainer's result. On
    divergence the run is marked diverged and DivergenceError re-raised."""
    main = read_environment().rank == 0
    run_dir = Path(cfg.out or "")
    t0 = time.perf_counter()
    try:
        result = Trainer(cfg, init_from=init_from).fit()
    except DivergenceError as exc:
        if main:
            add_wall(run_dir, time.perf_counter() - t0)
            mark_diverged(run_dir, str(exc))
        raise
    if main:
        add_wall(run_dir, time.perf_counter() - t0)
        mark_diverged(run_dir, None)  # an earlier attempt's record, now superseded
    return result
