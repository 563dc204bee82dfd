"""The pre-run checks, in one place: the trainer runs `check_config` before it starts
anything; everything that queues a run elsewhere (a SLURM job, a local pool process, a
sweep trial, a table row) runs `check_experiment` first, so a bad config or a missing
split fails on the submitting node, not in a job hours later."""

from __future__ import annotations

from pathlib import Path

from bioscale.training.config import ConfigError, ExperimentConfig


def check_config(cfg: ExperimentConfig) -> None:
    """Checks that need the registries, before anything is started (raises ConfigError):
    a run directory and data are set, the rule and the architecture exist,
    model.weight_sharing has LC layers to share, and a decoupled pipeline's rule can run
    decoupled."""
    from bioscale.algorithms import build_rule
    from bioscale.distributed.pipeline_schedule import decoupled_refusal
    from bioscale.models import get_arch

    if not cfg.out:
        raise ConfigError("no run directory: pass --out DIR (or set `out:` in the config)")
    if not cfg.data.path:
        raise ConfigError("no data: pass --data DIR (or set data.path in the config)")
    try:
        build_rule(cfg.algorithm)
        spec = get_arch(cfg.model.arch)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if cfg.model.weight_sharing != "none" and not any(layer[0] == "lc" for layer in spec.layers):
        raise ConfigError(
            f"config: model.weight_sharing={cfg.model.weight_sharing} needs locally-connected layers; "
            f"{cfg.model.arch} has none"
        )
    dist, rule = cfg.distributed, cfg.algorithm.rule
    if dist.backend == "pipeline" and dist.pipeline_mode == "decoupled":
        refusal = decoupled_refusal(rule)
        if refusal:  # here, not in the stages: one line before any process group or weight exists
            raise ConfigError(f"config: distributed.pipeline_mode=decoupled with algorithm.rule={rule}: {refusal}")


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


def check_layout(cfg: ExperimentConfig, world_size: int, tasks_per_node: int | None = None) -> str | None:
    """Checks of the process layout, for a launcher that knows the world size before the
    job starts (raises ConfigError). For `distributed.backend=pipeline`, returns where the
    S × D ranks go: stage-major (rank = stage·D + replica), so a stage's D replicas — whose
    weight all-reduce is the heavy traffic — are consecutive ranks, on one node when D
    divides the tasks per node; only the light activations cross nodes."""
    dist = cfg.distributed
    if dist.backend != "pipeline":
        return None
    if world_size % dist.stages:
        raise ConfigError(
            f"config: distributed.stages = {dist.stages} does not divide the world size {world_size} "
            "(nodes × tasks per node)"
        )
    replicas = world_size // dist.stages
    per_node = tasks_per_node or world_size
    where = []
    for s in range(dist.stages):
        nodes = sorted({r // per_node for r in range(s * replicas, (s + 1) * replicas)})
        where.append(f"stage {s}: ranks {s * replicas}-{(s + 1) * replicas - 1} on node(s) {nodes}")
    return f"pipeline {dist.stages} stages × {replicas} replicas, stage-major; " + "; ".join(where)
