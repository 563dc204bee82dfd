"""The pre-run checks, in one place: the trainer runs `check_config` before it starts
anything; everything that queues a run elsewhere (a SLURM job, a local pool process, a
sweep trial, a table row) runs `check_experiment` first, so a bad config or a missing
split fails on the submitting node, not in a job hours later."""

from __future__ import annotations

from pathlib import Path

from bioscale.training.config import ConfigError, ExperimentConfig


def check_config(cfg: ExperimentConfig) -> None:
    """Checks that need the registries, before anything is started (raises ConfigError):
    a run directory and data are set, the rule and the architecture exist."""
    from bioscale.algorithms import build_rule
    from bioscale.models import get_arch

    if not cfg.out:
        raise ConfigError("no run directory: pass --out DIR (or set `out:` in the config)")
    if not cfg.data.path:
        raise ConfigError("no data: pass --data DIR (or set data.path in the config)")
    try:
        build_rule(cfg.algorithm)
        get_arch(cfg.model.arch)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def check_experiment(cfg: ExperimentConfig) -> None:
    """Everything checkable before a run is queued somewhere else (a SLURM job, a pool
    process, a sweep trial): `check_config`, a validation split for model selection, and
    every split the run will read opens."""
    from bioscale.data_pipeline import DataError, open_split

    check_config(cfg)
    if "val" not in cfg.train.eval_splits:
        raise ConfigError(
            "config: train.eval_splits must include val: model selection (result.json) and "
            "sweep ranking read the validation error"
        )
    root = Path(cfg.data.path or "")
    for split in ("train", *cfg.train.eval_splits):
        try:
            open_split(root / split)
        except (DataError, OSError) as exc:
            raise ConfigError(f"data: {exc}") from None
