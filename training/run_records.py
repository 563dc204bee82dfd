"""What a run directory says about its run, beside the trainer's own files (config.yaml,
checkpoints/, result.json), and the one rule for "is this run done" that sweeps and the
paper tables share:

    wall.json      seconds spent training it, summed over attempts, and the attempt count
                   (the trainer does not time itself; `training.entry.train_run` does)
    diverged.json  the run stopped on NaN/inf (its message). A diverged run counts as
                   finished: resuming it would replay the same steps from the last good
                   checkpoint and diverge again, so nothing resubmits it.

Plain files and JSON only (no torch): the sweep CLI reads these on a login node."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from bioscale.data_pipeline.atomic_files import atomic_write_text
from bioscale.training.selection import RESULT_FILE

WALL_FILE = "wall.json"
DIVERGED_FILE = "diverged.json"


def add_wall(run_dir: Path, seconds: float) -> None:
    previous = read_json(run_dir / WALL_FILE) or {}
    record = {"wall_s": previous.get("wall_s", 0.0) + seconds, "attempts": previous.get("attempts", 0) + 1}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / WALL_FILE, json.dumps(record) + "\n")


def mark_diverged(run_dir: Path, message: str | None) -> None:
    """Record (message) or clear (None) the run's divergence."""
    if message is None:
        (run_dir / DIVERGED_FILE).unlink(missing_ok=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / DIVERGED_FILE, json.dumps({"message": message}) + "\n")


class RunState(str, Enum):
    NEW = "new"
    """Nothing trained yet (no result.json)."""
    PARTIAL = "partial"
    """Some epochs done, fewer than the target: re-running resumes it."""
    FINISHED = "finished"
    """All target epochs done."""
    DIVERGED = "diverged"
    """Stopped on NaN/inf; counts as finished (never resubmitted)."""

    @property
    def done(self) -> bool:
        return self in (RunState.FINISHED, RunState.DIVERGED)


def run_state(run_dir: str | Path, target_epochs: int) -> RunState:
    """What the run directory says of a run that should reach `target_epochs`."""
    run_dir = Path(run_dir)
    result = read_json(run_dir / RESULT_FILE)
    if result is not None and int(result.get("epochs_completed", 0)) >= target_epochs:
        return RunState.FINISHED
    if (run_dir / DIVERGED_FILE).exists():
        return RunState.DIVERGED
    return RunState.NEW if result is None else RunState.PARTIAL


def divergence_message(run_dir: str | Path) -> str | None:
    record = read_json(Path(run_dir) / DIVERGED_FILE)
    return None if record is None else str(record.get("message", "diverged"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON record of a run directory, None when absent or unreadable (being replaced)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
