"""Scalars of a run, written twice: TensorBoard events in `<run>/tb/` and one
JSON object per logged step in `<run>/metrics.jsonl` (for scripts and tests
that should not parse event files). Rank 0 writes; other ranks construct the
logger with `enabled=False` and every call is a no-op.

Tags (DESIGN, one x-axis: the global step): train/loss, train/top1_err,
val/top1_err, val/top5_err, test/top1_err, test/top5_err, layer{i}/local_loss,
layer{i}/inverse_loss, layer{i}/angle_to_bp_deg, perf/images_per_sec,
perf/data_time_pct, opt/lr_forward, opt/lr_inverse.

Resume: pass the step the run resumes at. TensorBoard gets it as
`purge_step` (events at or after it, from the killed attempt, are hidden), and
metrics.jsonl is rewritten without those lines, so both show each step once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bioscale.data_pipeline.atomic_files import atomic_write_text

TAGS = (
    "train/loss",
    "train/top1_err",
    "val/top1_err",
    "val/top5_err",
    "test/top1_err",
    "test/top5_err",
    "perf/images_per_sec",
    "perf/data_time_pct",
    "opt/lr_forward",
    "opt/lr_inverse",
)
LAYER_TAGS = ("layer{i}/local_loss", "layer{i}/inverse_loss", "layer{i}/angle_to_bp_deg")


def _as_float(tag: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {tag!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric {tag!r}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {'optim.forward.lr': 1e-4, ...} with values the
    HPARAMS plugin accepts (bool, number, str)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:  # lists: shown as text so runs still compare on them
            flat[name] = str(value)
        # None is left out: as the string "None" it would give the column a
        # text type in one run and a number type in another
    return flat


def _read_jsonl(path: Path, before_step: int | None) -> tuple[list[str], bool]:
    """Lines to keep: complete JSON objects with step < before_step (a torn
    last line from a killed process is dropped). Also whether anything was dropped."""
    if not path.exists():
        return [], False
    kept, dropped = [], False
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
            complete = line.endswith("\n") and isinstance(record.get("step"), int)
        except ValueError:
            complete = False
        if complete and (before_step is None or record["step"] < before_step):
            kept.append(line)
        else:
            dropped = True
    return kept, dropped


class MetricsLogger:
    """`log_scalars(step, {...})` to TensorBoard and metrics.jsonl; `close()` at the end.

    Calls for the same step are merged into one jsonl line, written when a
    later step is logged or on `flush()`: call `flush()` before saving a
    checkpoint so that everything logged up to it is on disk."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None, flush_secs: int = 30):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._jsonl = None
        self._step: int | None = None
        self._pending: dict[str, float | None] = {}
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is an optional dependency

        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        kept, dropped = _read_jsonl(path, resume_step)
        if dropped:
            atomic_write_text(path, "".join(kept))
        self._jsonl = open(path, "a", encoding="utf-8")
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_step, flush_secs=flush_secs)

    @property
    def tb_dir(self) -> Path:
        return self.run_dir / "tb"

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Write every tag -> number (float, int or one-element tensor) at `step`."""
        if not self.enabled:
            return
        if self._jsonl is None:
            raise RuntimeError("MetricsLogger is closed")
        assert self._writer is not None  # opened together with _jsonl
        values = {tag: _as_float(tag, v) for tag, v in scalars.items()}
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=step)
        if step != self._step:
            self._write_pending()
            self._step = step
        # JSON has no NaN/inf: a diverged value is written as null
        self._pending.update({t: (v if math.isfinite(v) else None) for t, v in values.items()})

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int = 0) -> None:
        """Record the run's hyperparameters (nested dicts are flattened to dotted
        keys, e.g. the whole config) and its final metrics for the HPARAMS tab.
        Written into this run's own event file — `add_hparams` would create a
        separate sub-run. The metrics are also logged as scalars at `step`, so
        give them tags of their own (e.g. 'result/test_top1_err')."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.log_scalars(step, metrics)
        assert self._writer is not None  # log_scalars raised if closed
        flat = _flatten(hparams)
        for summary in hparams_summary(flat, {tag: _as_float(tag, v) for tag, v in metrics.items()}):
            self._writer._get_file_writer().add_summary(summary, global_step=step)

    def _write_pending(self) -> None:
        if self._pending:
            assert self._jsonl is not None  # pending values are only logged while open
            record = {"step": self._step, "time": round(time.time(), 3), **self._pending}
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            self._pending = {}

    def flush(self) -> None:
        if self.enabled and self._jsonl is not None:
            self._write_pending()
            assert self._writer is not None  # opened together with _jsonl
            self._writer.flush()

    def close(self) -> None:
        if self.enabled and self._jsonl is not None:
            self.flush()
            assert self._writer is not None  # opened together with _jsonl
            self._writer.close()
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
