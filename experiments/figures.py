"""Figures of a reproduced table (PNG, matplotlib, no display needed):
  curves.png         train (solid) and test (dashed) error per method over training, one panel
                     per net, like the paper's Figures 2 and 4
  angles_<net>.png   per-layer angle between each rule's update and the BP gradient over training
  feedback_angles.png  per-layer angle between a trained feedback B_l and the forward W_l over
                     training (Kolen–Pollack: it should fall), for the rows that log it
  bars.png           the final table: test error per method and net (train error as dots)
They read the run directories (result.json history, metrics.jsonl); the first seed of each row
draws the curves, the bars show the mean ± std over seeds."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from bioscale.data_pipeline.atomic_files import atomic_open
from bioscale.experiments.report import RowResult, column
from bioscale.experiments.table_types import Table

ANGLE = re.compile(r"layer(\d+)/angle_to_bp_deg")
FEEDBACK_ANGLE = re.compile(r"angle/feedback_vs_forward/l(\d+)")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in tests and over SSH
    import matplotlib.pyplot as plt

    return plt


def columns(results: Sequence[RowResult]) -> list[str]:
    cols: list[str] = []
    for res in results:
        if column(res.row.arch) not in cols:
            cols.append(column(res.row.arch))
    return cols


def _methods(results: Sequence[RowResult]) -> list[str]:
    methods: list[str] = []
    for res in results:
        if res.row.method not in methods:
            methods.append(res.row.method)
    return methods


def _forward_epochs(res: RowResult, epoch: int) -> float:
    """x-axis: epochs of forward training done. An alternating run trains only its inverses
    in even epochs, so its epoch e has (e + 1) // 2 forward epochs behind it."""
    return (epoch + 1) // 2 if res.row.schedule == "alternating" else epoch + 1


def curves(table: Table, results: Sequence[RowResult], path: str | Path) -> Path:
    plt = _plt()
    cols, methods = columns(results), _methods(results)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    ncol = min(2, len(cols))
    nrow = -(-len(cols) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow + 0.8), squeeze=False, sharey=True)
    for ax, col in zip(axes.flat, cols):
        for res in (r for r in results if column(r.row.arch) == col and r.runs):
            hist = res.runs[0].get("history", [])
            if res.row.schedule == "alternating":  # after an inverse epoch the forward net is unchanged
                hist = [h for h in hist if h["epoch"] % 2 == 1]
            x = [_forward_epochs(res, h["epoch"]) for h in hist]
            ax.plot(
                x, [100 * h["train_top1_err"] for h in hist], "-", color=colors[res.row.method], label=res.row.method
            )
            ax.plot(
                x, [100 * (h.get("test_top1_err") or float("nan")) for h in hist], "--", color=colors[res.row.method]
            )
        ax.set_title(table.arch_titles.get(col, col))
        ax.set_xlabel("epochs of forward training (as capped by the budget)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(cols) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 error % (train solid, test dashed)")
    handles: dict = {}
    for ax in axes.flat:  # one legend entry per method over all panels
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.8 / (4 * nrow + 0.8), 1, 1))
    return _save(fig, path, plt)


def _angle_series(run_dir: Path, pattern: re.Pattern = ANGLE) -> dict[int, tuple[list[int], list[float]]]:
    """layer -> (steps, degrees) of the metrics.jsonl keys matching `pattern` (group 1: the layer)."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return series
    for line in lines:
        record = json.loads(line)
        for key, value in record.items():
            m = pattern.fullmatch(key)
            if m and value is not None:
                steps, values = series.setdefault(int(m.group(1)), ([], []))
                steps.append(record["step"])
                values.append(value)
    return series


def _layer_panels(panels: list[tuple[str, dict]], path: Path, ylabel: str, title: str) -> Path:
    """A panel per (title, series), a line per layer, 90° (orthogonal) dotted."""
    plt = _plt()
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False, sharey=True)
    for ax, (name, series) in zip(axes.flat, panels):
        for layer, (steps, values) in sorted(series.items()):
            ax.plot(steps, values, marker=".", label=f"layer {layer}")
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def angles(table: Table, results: Sequence[RowResult], out_dir: str | Path, run_dirs: dict[str, Path]) -> list[Path]:
    """One figure per net: a panel per non-BP rule, a line per layer. `run_dirs`: row key ->
    the run directory whose metrics.jsonl is drawn (the first seed)."""
    written = []
    for col in columns(results):
        rows = [r for r in results if column(r.row.arch) == col and r.row.rule != "bp" and r.row.key in run_dirs]
        panels = [(r.row.method, _angle_series(run_dirs[r.row.key])) for r in rows]
        panels = [(name, series) for name, series in panels if series]
        if panels:
            title = f"{table.arch_titles.get(col, col)}: angle to BP per layer"
            written.append(_layer_panels(panels, Path(out_dir) / f"angles_{col}.png", "angle to BP (deg)", title))
    return written


def feedback_angles(
    table: Table, results: Sequence[RowResult], out_dir: str | Path, run_dirs: dict[str, Path]
) -> list[Path]:
    """One figure, a panel per row that logs `angle/feedback_vs_forward/l<k>` (the angle
    between a trained feedback matrix and its forward weights: Kolen–Pollack's B → W)."""
    panels = []
    for res in results:
        series = _angle_series(run_dirs[res.row.key], FEEDBACK_ANGLE) if res.row.key in run_dirs else {}
        if series:
            net = table.arch_titles.get(column(res.row.arch), column(res.row.arch))
            panels.append((f"{res.row.method}, {net}", series))
    if not panels:
        return []
    path = Path(out_dir) / "feedback_angles.png"
    return [_layer_panels(panels, path, "angle(B, W) (deg)", "Feedback vs forward weights per layer")]


def bars(table: Table, results: Sequence[RowResult], path: str | Path) -> Path:
    plt = _plt()
    cols, methods = columns(results), _methods(results)
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.3 * len(methods) * len(cols)), 4.5))
    for j, col in enumerate(cols):
        xs, test, err, train = [], [], [], []
        for i, method in enumerate(methods):
            match = [r for r in results if r.row.method == method and column(r.row.arch) == col and r.runs]
            res = match[0] if match else None
            test_err = res.mean("test_top1_err") if res is not None else None
            if res is not None and test_err is not None:
                xs.append(i + (j - (len(cols) - 1) / 2) * width)
                test.append(100 * test_err)
                err.append(100 * (res.std("test_top1_err") or 0.0))
                train.append(100 * (res.mean("train_top1_err") or float("nan")))
        ax.bar(xs, test, width, yerr=err, capsize=2, label=f"{table.arch_titles.get(col, col)} test")
        ax.plot(xs, train, "k.", ms=4, label="train" if j == 0 else None)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 error % at the selected epoch")
    ax.set_title(table.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:  # a report links it: never a torn image
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path


def all_figures(
    table: Table, results: Sequence[RowResult], out_dir: str | Path, run_dirs: dict[str, Path]
) -> list[Path]:
    out_dir = Path(out_dir)
    if not any(r.runs for r in results):
        return []
    return [
        curves(table, results, out_dir / "curves.png"),
        *angles(table, results, out_dir, run_dirs),
        *feedback_angles(table, results, out_dir, run_dirs),
        bars(table, results, out_dir / "bars.png"),
    ]
