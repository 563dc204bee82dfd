"""The paper's model selection and the run's `result.json`.

The paper (ICLR 2018, §4): "We then selected the best run ... based on
validation set accuracy across 5 consecutive training epochs (i.e. passes over
training set) at the end of which we also measured accuracy on the test set."

Our reading, used for `selected_epoch`:
  1. the window is the `window` consecutive epochs with the lowest *mean*
     validation top-1 error (a run shorter than the window: the whole run);
     ties go to the earliest window;
  2. inside it, the selected epoch is the one with the lowest validation top-1
     error (ties: the earliest), and its test top-1/top-5 errors are reported.
The sentence can also be read as "test error at the last epoch of that
window"; result.json carries that too (`window_end`), so tables can use either
without rerunning. A NaN validation error (diverged) counts as +inf.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bioscale.data_pipeline.atomic_files import atomic_write_text

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class EpochErrors:
    """Errors (fractions in [0, 1]) measured at the end of one epoch; top-5 and
    test may be None (fewer than 6 classes, or a split not evaluated)."""

    epoch: int
    val_top1_err: float
    val_top5_err: float | None = None
    test_top1_err: float | None = None
    test_top5_err: float | None = None

    @classmethod
    def coerce(cls, item: EpochErrors | Mapping[str, Any]) -> EpochErrors:
        if isinstance(item, EpochErrors):
            return item
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in item.items() if k in names})


@dataclass(frozen=True)
class Selection:
    selected_epoch: int
    val_top1_err: float
    val_top5_err: float | None
    test_top1_err: float | None
    test_top5_err: float | None
    epochs_completed: int
    window_first_epoch: int
    window_last_epoch: int
    window_mean_val_top1_err: float
    window_end: EpochErrors
    """The errors at the window's last epoch (the other reading of the paper)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hparam_metrics(self) -> dict[str, float]:
        """Final metrics for `MetricsLogger.log_hparams` (tags of their own)."""
        keys = ("val_top1_err", "val_top5_err", "test_top1_err", "test_top5_err")
        return {f"result/{k}": getattr(self, k) for k in keys if getattr(self, k) is not None}


def _check_fraction(epoch: int, name: str, value: float | None) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"epoch {epoch}: {name} = {value!r} is not a fraction in [0, 1]")


def _val_key(e: EpochErrors) -> float:
    return math.inf if math.isnan(e.val_top1_err) else e.val_top1_err


def select_epoch(history: Sequence[EpochErrors | Mapping[str, Any]], window: int = 5) -> Selection:
    """Apply the selection rule above to per-epoch errors (consecutive epochs, in order)."""
    if window < 1:
        raise ValueError(f"selection window must be >= 1, got {window}")
    epochs = [EpochErrors.coerce(item) for item in history]
    if not epochs:
        raise ValueError("model selection needs at least one evaluated epoch")
    for prev, cur in zip(epochs, epochs[1:]):
        if cur.epoch != prev.epoch + 1:
            raise ValueError(f"epochs must be consecutive: epoch {cur.epoch} follows epoch {prev.epoch}")
    for e in epochs:
        if e.val_top1_err is None:
            raise ValueError(f"epoch {e.epoch}: val_top1_err is missing (validation is needed for selection)")
        for f in fields(EpochErrors)[1:]:
            _check_fraction(e.epoch, f.name, getattr(e, f.name))
    width = min(window, len(epochs))
    means = [sum(_val_key(e) for e in epochs[i : i + width]) / width for i in range(len(epochs) - width + 1)]
    start = min(range(len(means)), key=lambda i: means[i])  # min() keeps the earliest of equal means
    chosen = epochs[start : start + width]
    best = min(chosen, key=_val_key)
    return Selection(
        selected_epoch=best.epoch,
        val_top1_err=best.val_top1_err,
        val_top5_err=best.val_top5_err,
        test_top1_err=best.test_top1_err,
        test_top5_err=best.test_top5_err,
        epochs_completed=len(epochs),
        window_first_epoch=chosen[0].epoch,
        window_last_epoch=chosen[-1].epoch,
        window_mean_val_top1_err=means[start],
        window_end=chosen[-1],
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_result(run_dir: str | Path, selection: Selection, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `<run_dir>/result.json` atomically: the selection plus `extra`
    (e.g. run name, world size, wall time); `extra` may not shadow its keys."""
    record = selection.to_dict()
    clash = sorted(set(record) & set(extra or {}))
    if clash:
        raise ValueError(f"result.json: extra keys {clash} would overwrite the selection's")
    record.update(extra or {})
    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN (a diverged run) becomes null: strict JSON readers reject NaN
    atomic_write_text(path, json.dumps(_finite_or_none(record), indent=2, allow_nan=False) + "\n")
    return path


def read_result(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no result yet (the run has not finished)") from None
