"""The sweep table: one row per trial, ranked, printed and written as
`report.csv` and `report.md` in the sweep directory.

Ranking: trials that trained all `epochs` come first (after pruning these
are the kept ones), then the others; inside each group by the validation
top-1 error of the paper's model selection (result.json), ties by trial id.
Test error is reported, never used to rank."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bioscale.cluster.sweep import Sweep, TrialStatus, error_sort_key
from bioscale.data_pipeline.atomic_files import atomic_write_text


def short_name(key: str) -> str:
    """optim.forward.lr -> fwd.lr, algorithm.sigma -> sigma: narrow table columns."""
    return key.replace("optim.forward.", "fwd.").replace("optim.inverse.", "inv.").replace("algorithm.", "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(err: float | None) -> str:
    return "" if err is None else f"{100 * err:.2f}"


def ranked(sweep: Sweep, status: list[TrialStatus]) -> list[tuple[int | None, TrialStatus]]:
    scored = [s for s in status if s.val_top1_err is not None]
    scored.sort(key=lambda s: (s.epochs_done < sweep.spec.epochs, error_sort_key(s.val_top1_err), s.trial))
    unscored = [s for s in status if s.val_top1_err is None]
    return [(r + 1, s) for r, s in enumerate(scored)] + [(None, s) for s in unscored]


def rows(sweep: Sweep, status: list[TrialStatus]) -> tuple[list[str], list[list[str]]]:
    keys = list(sweep.spec.space)
    header = ["rank", "trial", "state", "epochs", "val_top1_%", "test_top1_%", *map(short_name, keys), "job", "exit"]
    body = []
    for rank, s in ranked(sweep, status):
        body.append(
            [
                str(rank) if rank else "-",
                f"t{s.trial:03d}",
                s.state,
                f"{s.epochs_done}/{s.target_epochs}",
                _pct(s.val_top1_err),
                _pct(s.test_top1_err),
                *(_fmt(s.params.get(k)) for k in keys),
                s.job_id or "",
                s.exit_code if s.state in ("failed", "stopped", "lost", "diverged") else "",
            ]
        )
    return header, body


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in body])


def summary(sweep: Sweep, status: list[TrialStatus]) -> str:
    counts: dict[str, int] = {}
    for s in status:
        counts[s.state] = counts.get(s.state, 0) + 1
    spec = sweep.spec
    prune = f", pruned after {spec.prune_after_epochs} epoch(s) keeping {spec.keep}" if spec.pruning else ""
    states = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return (
        f"sweep {spec.name}: {spec.trials} trials, {spec.epochs} epoch(s){prune}, space {spec.space_source}, "
        f"seed {spec.seed} — {states}"
    )


def failure_details(status: list[TrialStatus]) -> str:
    parts = []
    for s in status:
        if s.state == "diverged":
            parts.append(
                f"trial t{s.trial:03d} diverged (job {s.job_id}, exit code {s.exit_code or '?'}): "
                f"{s.divergence}; it counts as finished and is not run again"
            )
        elif s.state in ("failed", "stopped", "lost"):
            why = (
                f"job state {s.slurm_state}, exit code {s.exit_code or '?'}"
                if s.state == "failed"
                else "its driver (the local pool) ended before it"
                if s.state == "lost"
                else f"job ended ({s.slurm_state}) after {s.epochs_done} of {s.target_epochs} epochs"
            )
            tail = "\n".join("    " + ln for ln in (s.stderr_tail or "(no stderr log)").splitlines())
            parts.append(f"trial t{s.trial:03d} {s.state}: job {s.job_id}, {why}; stderr tail:\n{tail}")
    return "\n\n".join(parts)


def write_report(sweep: Sweep, status: list[TrialStatus]) -> tuple[str, Path, Path]:
    """The printable report; also writes report.csv and report.md."""
    header, body = rows(sweep, status)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *body])
    csv_path, md_path = sweep.root / "report.csv", sweep.root / "report.md"
    atomic_write_text(csv_path, buf.getvalue())
    head = summary(sweep, status)
    atomic_write_text(md_path, f"# {head}\n\n{markdown_table(header, body)}\n")
    text = f"{head}\n\n{text_table(header, body)}"
    details = failure_details(status)
    return (f"{text}\n\n{details}" if details else text), csv_path, md_path
