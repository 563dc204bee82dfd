"""Collect the runs of a table and write it as CSV (one line per row, fractions like
result.json) and Markdown (the paper's layout: methods × architectures, percentages,
next to the paper's numbers)."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bioscale.algorithms.config import TP_RULES
from bioscale.data_pipeline.atomic_files import atomic_open, atomic_write_text
from bioscale.experiments.runner import PlannedRun
from bioscale.experiments.table_types import Row, Table
from bioscale.training.run_records import WALL_FILE, RunState, read_json, run_state
from bioscale.training.selection import RESULT_FILE

CSV_COLUMNS = (
    "table",
    "row",
    "method",
    "rule",
    "schedule",
    "arch",
    "net",
    "config",
    "status",
    "seeds",
    "epochs",
    "steps",
    "selected_epoch",
    "train_top1_err",
    "train_top1_err_std",
    "val_top1_err",
    "test_top1_err",
    "test_top1_err_std",
    "test_top5_err",
    "test_top5_err_std",
    "lr",
    "inverse_lr",
    "sigma",
    "alpha",
    "wall_s",
    "paper_source",
    "paper_train_top1_err",
    "paper_test_top1_err",
    "paper_test_top5_err",
)


@dataclass
class RowResult:
    row: Row
    runs: list[dict] = field(default_factory=list)
    """Per finished seed: result.json plus `train_top1_err` at the selected epoch and `wall_s`."""
    planned: int = 0
    status: str = "missing"
    hparams: dict = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.runs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    def mean(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.fmean(v) if v else None

    def std(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.stdev(v) if len(v) > 1 else None


def _run_record(run: PlannedRun) -> tuple[dict | None, str]:
    result = read_json(run.run_dir / RESULT_FILE)
    wall = read_json(run.run_dir / WALL_FILE) or {}
    state = run_state(run.run_dir, run.load_config().train.epochs)
    if result is None:
        return None, "diverged" if state is RunState.DIVERGED else "missing"
    by_epoch = {h["epoch"]: h for h in result.get("history", [])}
    selected = by_epoch.get(result.get("selected_epoch"), {})
    record = dict(result, train_top1_err=selected.get("train_top1_err"), wall_s=wall.get("wall_s"))
    return record, {RunState.FINISHED: "ok", RunState.DIVERGED: "diverged"}.get(state, "partial")


def collect(table: Table, runs: Sequence[PlannedRun]) -> list[RowResult]:
    by_row: dict[str, RowResult] = {}
    for run in runs:
        res = by_row.setdefault(run.row.key, RowResult(run.row))
        res.planned += 1
        cfg = run.load_config()
        res.hparams = {
            "epochs": cfg.train.epochs,
            "lr": cfg.optim.forward.lr,
            "inverse_lr": cfg.optim.inverse.lr if _is_tp(run.row) else None,
            "sigma": cfg.algorithm.sigma,
            "alpha": cfg.algorithm.alpha,
        }
        record, status = _run_record(run)
        if record is not None and status in ("ok", "partial"):
            res.runs.append(record)
        res.status = _worst(res.status if res.planned > 1 else "ok", status)
    return [by_row[r.key] for r in table.rows if r.key in by_row]


def _is_tp(row: Row) -> bool:
    return row.rule in TP_RULES


def _worst(a: str, b: str) -> str:
    order = ("ok", "partial", "diverged", "missing")
    return max(a, b, key=order.index)


# ------------------------------------------------------------------------------------- CSV


def write_csv(table: Table, results: Sequence[RowResult], path: str | Path) -> Path:
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for res in results:
            row, paper = res.row, res.row.paper
            walls = res.values("wall_s")
            writer.writerow(
                {
                    "table": table.name,
                    "row": row.key,
                    "method": row.method,
                    "rule": row.rule,
                    "schedule": row.schedule or "",
                    "arch": row.arch,
                    "net": row.net,
                    "config": f"configs/{row.config}",
                    "status": res.status,
                    "seeds": len(res.runs),
                    "epochs": res.hparams.get("epochs"),
                    "steps": _num(res.mean("steps")),
                    "selected_epoch": _num(res.mean("selected_epoch")),
                    **{
                        k: _num(res.mean(k))
                        for k in ("train_top1_err", "val_top1_err", "test_top1_err", "test_top5_err")
                    },
                    **{f"{k}_std": _num(res.std(k)) for k in ("train_top1_err", "test_top1_err", "test_top5_err")},
                    **{k: _num(res.hparams.get(k)) for k in ("lr", "inverse_lr", "sigma", "alpha")},
                    "wall_s": _num(sum(walls) if walls else None),
                    "paper_source": paper.source if paper else "",
                    "paper_train_top1_err": _num(_frac(paper.train if paper else None)),
                    "paper_test_top1_err": _num(_frac(paper.test if paper else None)),
                    "paper_test_top5_err": _num(_frac(paper.test_top5 if paper else None)),
                }
            )
    return path


def _frac(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def _num(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# -------------------------------------------------------------------------------- Markdown


def _pct(res: RowResult, key: str) -> str:
    if res.status in ("missing", "diverged") and not res.runs:
        return res.status
    mean, std = res.mean(key), res.std(key)
    if mean is None:
        return "–"
    text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    return text + (" (partial)" if res.status == "partial" else "")


def _paper_cell(row: Row, top5: bool) -> str:
    p = row.paper
    if p is None:
        return "–"
    parts = [p.train, p.test] + ([p.test_top5] if top5 else [])
    return " / ".join("–" if v is None else f"{v:.2f}" for v in parts) + (" †" if p.other_net else "")


def column(arch: str) -> str:
    """The BP ConvNet sits in its LC net's column, as in the NeurIPS table."""
    return arch.replace("conv", "lc")


def markdown_tables(table: Table, results: Sequence[RowResult]) -> str:
    """Methods × architectures, one Markdown table per paper version's nets."""
    columns: list[str] = []
    for res in results:
        col = column(res.row.arch)
        if col not in columns:
            columns.append(col)
    groups = [[c for c in columns if not c.startswith("neurips")], [c for c in columns if c.startswith("neurips")]]
    metrics = ["train", "test top-1", "test top-5"] if table.top5 else ["train", "test"]
    keys = ["train_top1_err", "test_top1_err", "test_top5_err"][: len(metrics)]
    paper_head = "paper " + " / ".join(metrics)
    out = []
    for group in (g for g in groups if g):
        head = ["Method"]
        for col in group:
            title = table.arch_titles.get(col, col)
            head += [f"{title} {m} %" for m in metrics] + [f"{title} {paper_head}"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        methods: list[str] = []
        for res in results:
            if column(res.row.arch) in group and res.row.method not in methods:
                methods.append(res.row.method)
        for method in methods:
            cells = [method]
            for col in group:
                match = [r for r in results if r.row.method == method and column(r.row.arch) == col]
                if match:
                    cells += [_pct(match[0], k) for k in keys] + [_paper_cell(match[0].row, table.top5)]
                else:
                    cells += [""] * (len(keys) + 1)
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def runs_table(results: Sequence[RowResult]) -> str:
    """What each row ran with: config, hyperparameters, budget, selected epoch, time."""
    head = [
        "Row",
        "config",
        "fwd lr",
        "inv lr",
        "σ",
        "α (summed loss)",
        "epochs",
        "steps",
        "selected epoch",
        "seeds",
        "wall s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        h = res.hparams
        walls = res.values("wall_s")
        cells = [
            f"{res.row.arch} {res.row.method}",
            f"`configs/{res.row.config}`",
            _g(h.get("lr")),
            _g(h.get("inverse_lr")),
            _g(h.get("sigma")),
            _g(h.get("alpha")),
            str(h.get("epochs", "")),
            _g(res.mean("steps")),
            _g(res.mean("selected_epoch")),
            f"{len(res.runs)}/{res.planned}",
            f"{sum(walls):.0f}" if walls else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _g(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def write_markdown(
    table: Table,
    results: Sequence[RowResult],
    path: str | Path,
    *,
    budget_note: str = "",
    context: Sequence[str] = (),
    figures: Sequence[Path] = (),
    sections: Sequence[str] = (),
) -> Path:
    """`sections`: Markdown appended after the runs (e.g. each row's hyperparameter search)."""
    path = Path(path)
    parts = [f"# {table.title}", ""]
    parts += list(context) + ([""] if context else [])
    walls = [w for res in results for w in res.values("wall_s")]
    if walls:  # this invocation may have skipped finished runs: the runs' own times add up the table
        parts += [f"Training time of these {len(walls)} runs, summed over their attempts: {sum(walls):.0f} s.", ""]
    if budget_note:
        parts += [f"Budget: {budget_note}.", ""]
    parts += [
        "Errors in %: ours at the epoch chosen by the paper's model selection (best validation "
        "error over 5 consecutive epochs; test error there), mean ± std over seeds when there are "
        "several. Train error = mean error of the training batches during that epoch. "
        "Paper: train / test as printed.",
        "",
    ]
    if table.paper_note:
        parts += [table.paper_note, ""]
    parts += [markdown_tables(table, results), "", "## Runs", "", runs_table(results), ""]
    for fig in figures:
        rel = Path(fig).relative_to(path.parent) if Path(fig).is_relative_to(path.parent) else Path(fig)
        parts += [f"![{rel.stem}]({rel.as_posix()})", ""]
    for section in sections:
        parts += [section, ""]
    atomic_write_text(path, "\n".join(parts))
    return path
