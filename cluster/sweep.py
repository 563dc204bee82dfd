"""Random hyperparameter search as SLURM job arrays, with successive-halving
pruning (the paper's ImageNet protocol: start every configuration, continue
only the best after a few epochs).

A sweep directory holds:
  sweep.json        what defines the sweep (config, overrides, data, space,
                    seed, trials, epochs, pruning); a re-run must match it
  base_config.yaml  the merged config every trial is built from
  trials/tNNN/      one trainer run directory per trial (+ trial.json with the
                    sampled values, jobs.jsonl with every job that trained it)
  pruning.json      the stage-1 ranking and which trials continue, once decided
  logs/             submitit's `%A_%a` logs of the arrays
  report.csv/.md    written by `bioscale sweep status|report`

Stages (successive halving): every trial trains `prune_after_epochs[0]` epochs
(one array, at most `max_parallel` at a time); when all have ended, trials are
ranked by the validation error in their result.json, the best `keep[0]`
continue to the next stage's end in their own run directories — the trainer
resumes them from their epoch-end checkpoint, nothing restarts — and the rest
are pruned (any job of theirs still queued is cancelled); and so on, the last
stage ending at `epochs`. One pruning point is the paper's ImageNet protocol;
[3, 10] with keep [4, 1] is the Fashion-MNIST table's. Without pruning, one
stage to `epochs`.

Everything is recomputed from the run directories and SLURM, so re-running
the command continues where it stopped and submits nothing for trials that
are finished or still queued/running.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bioscale.cluster import launcher, slurm_jobs
from bioscale.cluster.executors import Executor
from bioscale.cluster.search_space import as_overrides, sample
from bioscale.cluster.sweep_spec import SweepSpec, differences
from bioscale.cluster.training_job import TrainingJob
from bioscale.data_pipeline.atomic_files import atomic_write_text
from bioscale.training.config import ConfigError
from bioscale.training.config_loader import config_from_dict, upgraded_config
from bioscale.training.run_records import RunState, divergence_message, read_json, run_state
from bioscale.training.selection import RESULT_FILE

log = logging.getLogger("bioscale.sweep")
SPEC_FILE, PRUNING_FILE, TRIAL_FILE = "sweep.json", "pruning.json", "trial.json"
BASE_CONFIG_FILE = "base_config.yaml"
DONE = ("finished", "diverged")
"""Trial states that need no more compute at their target epochs."""
RETRYABLE = ("failed", "stopped", "lost")
"""Trial states whose job ended early: resubmitted once per driver run (resuming from the last checkpoint)."""
UNKNOWN_GRACE_S = 300  # a job neither squeue nor sacct knows after this long is lost (retried on re-run)


@dataclass
class TrialStatus:
    trial: int
    params: dict[str, Any]
    state: str
    """new | pending | running | requeued | finished | diverged (stopped on NaN/inf: done, never resubmitted)
    | pruned | failed | stopped (job ended before its epochs) | lost (a local job whose driver ended)"""
    target_epochs: int
    epochs_done: int = 0
    result: dict[str, Any] | None = None
    job_id: str | None = None
    exit_code: str = ""
    stderr_tail: str = ""
    slurm_state: str = ""
    divergence: str = ""
    """A diverged trial's message (where and at which step)."""

    @property
    def val_top1_err(self) -> float | None:
        return self.result.get("val_top1_err") if self.result else None

    @property
    def test_top1_err(self) -> float | None:
        return self.result.get("test_top1_err") if self.result else None


@dataclass
class Sweep:
    root: Path
    spec: SweepSpec
    executor: Executor | None = None
    """Where trials run and whose job states `status` reads (local pool or SLURM)."""
    attempted: set[tuple[int, int]] = field(default_factory=set)
    """(trial, target epochs) submitted by this process: a failure is retried on the next run, not in a loop."""

    # ---------------------------------------------------------------- create
    @classmethod
    def create_or_resume(cls, root: Path, spec: SweepSpec | None, executor: Executor | None = None) -> Sweep:
        """Open the sweep in `root`; with `spec`, create it or check that it
        is the same sweep (a different one needs another directory)."""
        root = root.resolve()
        stored_path = root / SPEC_FILE
        stored = SweepSpec(**json.loads(stored_path.read_text())) if stored_path.exists() else None
        if spec is None:
            if stored is None:
                raise ConfigError(
                    f"{root} holds no sweep ({SPEC_FILE} missing); pass --config/--trials/--space to start one"
                )
            return cls(root, stored, executor)
        if stored is not None:
            stored.base_config = upgraded_config(stored.base_config, str(root / BASE_CONFIG_FILE))
            diffs = differences(asdict(stored), asdict(spec))
            if diffs:
                raise ConfigError(
                    f"{root} holds a different sweep ({'; '.join(diffs)}); use another --out, "
                    f"or run `bioscale sweep --out {root}` to continue the stored one"
                )
            return cls(root, stored, executor)
        sweep = cls(root, spec, executor)
        root.mkdir(parents=True, exist_ok=True)
        config_from_dict(spec.base_config).save_yaml(root / BASE_CONFIG_FILE)
        try:
            configs = [sweep._build_trial_config(i, spec.epochs) for i in range(spec.trials)]  # all checked first
        except ConfigError:
            (root / BASE_CONFIG_FILE).unlink()
            raise
        for i in range(len(configs)):
            sweep.trial_dir(i).mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                sweep.trial_dir(i) / TRIAL_FILE, json.dumps({"trial": i, "params": sweep.params(i)}, indent=1) + "\n"
            )
        atomic_write_text(stored_path, json.dumps(asdict(spec), indent=1) + "\n")
        return sweep

    # ----------------------------------------------------------------- trials
    def trial_dir(self, i: int) -> Path:
        return self.root / "trials" / f"t{i:03d}"

    def params(self, i: int) -> dict[str, Any]:
        return sample(self.spec.space, self.spec.seed, i)

    def _build_trial_config(self, i: int, epochs: int):
        name = f"{self.spec.name}-t{i:03d}"
        overrides = [*as_overrides(self.params(i)), f"train.epochs={epochs}", f"name={name}"]
        try:
            return launcher.build_config(
                str(self.root / BASE_CONFIG_FILE), overrides, self.spec.data, self.trial_dir(i)
            )
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({', '.join(as_overrides(self.params(i)))}): {exc}") from None

    def last_cluster(self) -> str | None:
        """The executor ('local' or 'slurm') of the newest job of any trial, if any ran."""
        records = [r for i in range(self.spec.trials) for r in launcher.job_records(self.trial_dir(i))]
        return max(records, key=lambda r: r.get("submitted", ""))["cluster"] if records else None

    def decisions(self) -> list[dict[str, Any]]:
        """The pruning decisions taken so far, one per finished stage (final once taken)."""
        path = self.root / PRUNING_FILE
        if not path.exists():
            return []
        stored = json.loads(path.read_text())
        return stored.get("decisions", [stored])  # a one-stage sweep of an earlier version stored one

    def winners(self) -> list[int] | None:
        """Trials still in the race after the latest pruning (None before any)."""
        decisions = self.decisions()
        return decisions[-1]["keep"] if decisions else None

    def target_epochs(self, i: int, decisions: list[dict[str, Any]]) -> int:
        """The end of the stage in which trial i was pruned, or of the current stage."""
        for stage, decision in enumerate(decisions):
            if i not in decision["keep"]:
                return self.spec.stages[stage]
        return self.spec.stages[len(decisions)]

    # ----------------------------------------------------------------- status
    @property
    def jobs(self) -> Executor:
        if self.executor is None:
            raise RuntimeError("this sweep was opened without an executor")
        return self.executor

    def status(self, with_logs: bool = True) -> list[TrialStatus]:
        decisions = self.decisions()
        winners = decisions[-1]["keep"] if decisions else None
        last_jobs = {}
        for i in range(self.spec.trials):
            records = launcher.job_records(self.trial_dir(i), self.jobs.cluster)
            if records:
                last_jobs[i] = records[-1]
        states = self.jobs.query(r["job_id"] for r in last_jobs.values())
        out = []
        for i in range(self.spec.trials):
            target = self.target_epochs(i, decisions)
            result = read_json(self.trial_dir(i) / RESULT_FILE)
            done = int(result.get("epochs_completed", 0)) if result else 0
            st = TrialStatus(i, self.params(i), "new", target, done, result)
            record = last_jobs.get(i)
            job = states[record["job_id"]] if record else None
            if job is not None:
                st.job_id, st.slurm_state, st.exit_code = job.job_id, job.state, job.exit_code
            pruned = winners is not None and i not in winners
            if job is not None and job.active:
                # result.json is written at every epoch end, before the job has
                # exited: a trial is finished only once its job has ended too
                st.state = job.state.lower()
            elif pruned:
                st.state = "pruned"  # final: never due again, whatever its last job did
            elif done < target and run_state(self.trial_dir(i), target) is RunState.DIVERGED:
                st.state = "diverged"  # done: resuming would diverge again
                st.divergence = divergence_message(self.trial_dir(i)) or ""
            elif done >= target or record is None or job is None or record.get("epochs", 0) < target:
                # (job is None exactly when record is: every job record names its job id)
                st.state = "finished" if done >= target else "new"
            elif job.state == "UNKNOWN" and _age_s(record) < UNKNOWN_GRACE_S:
                st.state = "pending"  # accounting has not seen the new job yet
            else:
                st.state = "lost" if job.state == slurm_jobs.LOST else "failed" if job.failed else "stopped"
                if with_logs:
                    st.stderr_tail = slurm_jobs.tail(slurm_jobs.log_paths(record["log_dir"], job.job_id)[1])
            out.append(st)
        return out

    # ---------------------------------------------------------------- advance
    def advance(self, limit: int | None = None) -> list[str]:
        """Submit what is due now, at most `limit` jobs (the free slots of a bounded pool; the
        rest wait for the next call); returns the new job ids (none when nothing is)."""
        status = self.status(with_logs=False)
        decided = len(self.decisions())
        alive = [s for s in status if s.state != "pruned"]
        if decided < len(self.spec.keeps):  # a pruning stage is running
            # decisions are final, so they wait for every trial's stage result: a trial
            # whose job failed or was killed (a driver or machine that stopped) is retried
            # by the next run of the command instead of being ranked on what it lacks
            if all(s.state in DONE for s in alive):
                self._decide_pruning(alive, decided)
                status = self.status(with_logs=False)
        due = [
            s
            for s in status
            if s.state == "new" or (s.state in RETRYABLE and (s.trial, s.target_epochs) not in self.attempted)
        ]  # a pruned trial is never due again: the decisions are final
        due = due if limit is None else due[: max(0, limit)]
        if not due:
            return []
        return self._submit(due)

    def _decide_pruning(self, alive: list[TrialStatus], stage: int) -> None:
        """Rank the trials that ended stage `stage` and keep the best `keeps[stage]`."""
        # a diverged trial ranks last whatever its earlier epochs scored: continuing it
        # would replay the same steps and diverge again
        ranked = sorted(
            (s for s in alive if s.state in DONE and s.val_top1_err is not None),
            key=lambda s: (s.state == "diverged", error_sort_key(s.val_top1_err), s.trial),
        )
        keep = [s.trial for s in ranked[: self.spec.keeps[stage]]]
        pruned = [s.trial for s in alive if s.trial not in keep]
        active = [
            s.job_id for s in alive if s.trial in pruned and s.job_id and s.state in ("pending", "running", "requeued")
        ]
        self.jobs.cancel(active)  # losers get no more compute
        after = self.spec.stages[stage]
        decision = {
            "after_epochs": after,
            "keep": keep,
            "pruned": pruned,
            "ranking": [{"trial": s.trial, "val_top1_err": s.val_top1_err} for s in ranked],
            "decided": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        decisions = [*self.decisions(), decision]
        # the latest decision's keys at the top level too: readers of one-stage sweeps look there
        record = {**decision, "pruned": sorted({t for d in decisions for t in d["pruned"]}), "decisions": decisions}
        atomic_write_text(self.root / PRUNING_FILE, json.dumps(record, indent=1) + "\n")
        log.info("pruning after %d epoch(s): continuing trials %s, pruned %s", after, keep, pruned)

    def _submit(self, due: list[TrialStatus]) -> list[str]:
        jobs = [
            TrainingJob(
                self._build_trial_config(s.trial, s.target_epochs).to_dict(), label=f"{self.spec.name} trial {s.trial}"
            )
            for s in due
        ]
        ids = self.jobs.submit(jobs, job_name=f"bioscale-sweep-{self.spec.name}")
        for s, job_id in zip(due, ids):
            launcher.record_job(self.trial_dir(s.trial), job_id, self.jobs, epochs=s.target_epochs, trial=s.trial)
            self.attempted.add((s.trial, s.target_epochs))
        log.info(
            "submitted %d trial(s) %s to %d epoch(s): job(s) %s",
            len(due),
            [s.trial for s in due],
            due[0].target_epochs,
            ", ".join(ids),
        )
        return ids

    def complete(self, status: list[TrialStatus]) -> bool:
        """Every trial that should reach `epochs` has (all of them without
        pruning; the kept ones once pruning is decided)."""
        if len(self.decisions()) < len(self.spec.keeps):
            return False
        return all(s.state in DONE for s in status if s.state != "pruned")


def _age_s(record: dict[str, Any]) -> float:
    submitted = datetime.fromisoformat(record["submitted"])
    return (datetime.now(timezone.utc) - submitted).total_seconds()


def error_sort_key(err: float | None) -> float:
    """Sort key of an error: NaN (a diverged epoch) ranks last, like in model selection;
    so does None (no error recorded; the callers sort only trials that have one)."""
    return math.inf if err is None or math.isnan(err) else err


class SweepLock:
    """One driver per sweep directory: two would submit the same trials twice."""

    def __init__(self, root: Path):
        self.path = root / ".driver.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            pid = self._f.read().strip()
            raise ConfigError(f"another `bioscale sweep` is driving {self.path.parent} (pid {pid})") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def run_sweep(sweep: Sweep, *, wait: bool, poll_s: float = 15.0, on_change=None) -> list[TrialStatus]:
    """Drive the sweep: submit what is due, and with `wait` keep polling until
    every trial is finished or pruned, or nothing more can run (failures).
    `on_change(status)` is called whenever a trial changes state."""
    with SweepLock(sweep.root):
        seen: dict[int, str] = {}
        idle = False
        while True:
            submitted = sweep.advance()
            status = sweep.status(with_logs=False)
            changes = {s.trial: s.state for s in status if seen.get(s.trial) != s.state}
            if changes and on_change:
                on_change(status, submitted)
            seen.update(changes)
            running = any(s.state in ("pending", "running", "requeued") for s in status)
            if sweep.complete(status) or not wait:
                return sweep.status()
            if not running and not submitted:
                if idle:  # nothing left that can run (failures): the caller reports them
                    return sweep.status()
                # the last job may have ended after advance() read the states: advance once
                # more (it may decide a pruning stage and submit its winners) before giving up
                idle = True
                continue
            idle = False
            time.sleep(poll_s)
